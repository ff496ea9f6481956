"""MOTChallenge ground truth for `labeler eval --mot`: a folder of sequences, one per video,
as `labeler export --format mot` writes them and CVAT exports "MOT 1.1":

    <root>/<video id>/gt/gt.txt      frame,id,x,y,w,h[,consider[,class[,visibility]]]
    <root>/<video id>/gt/labels.txt  class names, one a line (optional)

A sequence's folder, relative to the root, names the video it is the truth of (the row id
of the job's video). frame counts from 1, x, y, w, h are pixels; a line whose 7th column is
0 is not considered (MOTChallenge's flag: not counted and not matched, its box is dropped).
The class column names a line of labels.txt (from 1); without labels.txt or without a
class column, the sequence is evaluated without classes. Local or s3://.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from labeler.evaluate.ground_truth import EvalError
from labeler.storage import filesystem_for, storage_error

GT_FILE = "gt/gt.txt"
LABELS_FILE = "gt/labels.txt"


@dataclass
class MotSequence:
    """One video's ground truth: frame (from 1) -> [(object id, class id or 0, (x0, y0, x1,
    y1) pixels)]; classes: labels.txt's names (class k is classes[k - 1]) or None."""

    name: str
    frames: dict[int, list[tuple[int, int, tuple[float, float, float, float]]]] = field(
        default_factory=dict)
    classes: list[str] | None = None
    not_considered: int = 0  # lines with the 7th column 0

    @property
    def objects(self) -> int:
        return sum(len(boxes) for boxes in self.frames.values())


def load_mot_truth(uri: str) -> dict[str, MotSequence]:
    """{video id: its sequence} of every `<video id>/gt/gt.txt` under `uri`. EvalError when
    there is none or a line cannot be read; StorageError when the location cannot be."""
    fs, root = filesystem_for(uri)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        paths = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and i.path.endswith("/" + GT_FILE))
        sequences = {}
        for path in paths:
            folder = path[:-len(GT_FILE) - 1]
            name = posixpath.relpath(folder, root)
            labels = f"{folder}/{LABELS_FILE}"
            classes = None
            if fs.get_file_info(labels).type == pafs.FileType.File:
                with fs.open_input_stream(labels) as f:
                    classes = [line.strip() for line in _text(f.read(), labels).splitlines()
                               if line.strip()]
            with fs.open_input_stream(path) as f:
                sequences[name] = _sequence(name, _text(f.read(), path), path, classes)
    except OSError as err:
        raise storage_error(uri, "read the ground truth", err) from None
    if not sequences:
        raise EvalError(f"--mot {uri!r} holds no sequence: expected <video id>/{GT_FILE} "
                        f"files (MOTChallenge / CVAT MOT 1.1, or labeler export --format mot)")
    return sequences


def _text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise EvalError(f"{path} is not UTF-8 text") from None


def _sequence(name: str, text: str, path: str, classes: list[str] | None) -> MotSequence:
    sequence = MotSequence(name, classes=classes)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            frame, object_id = int(float(cells[0])), int(float(cells[1]))
            x, y, w, h = (float(c) for c in cells[2:6])
            consider = len(cells) < 7 or float(cells[6]) != 0
            class_id = int(float(cells[7])) if len(cells) >= 8 and classes is not None else 0
        except (ValueError, IndexError):
            raise EvalError(f"{path} line {number}: expected frame,id,x,y,w,h[,consider"
                            f"[,class[,visibility]]] numbers, got {line.strip()!r}") from None
        if classes is not None and len(cells) >= 8 and not 1 <= class_id <= len(classes):
            raise EvalError(f"{path} line {number}: class {class_id} is not a line of "
                            f"{LABELS_FILE} ({len(classes)} classes)")
        if frame < 1 or w < 0 or h < 0:
            raise EvalError(f"{path} line {number}: frame counts from 1 and w, h are sizes, "
                            f"got {line.strip()!r}")
        if not consider:
            sequence.not_considered += 1
            continue
        sequence.frames.setdefault(frame, []).append((object_id, class_id,
                                                      (x, y, x + w, y + h)))
    if classes is not None and not any(c for boxes in sequence.frames.values()
                                       for _, c, _ in boxes):
        sequence.classes = None  # no class column: evaluated without classes
    return sequence
