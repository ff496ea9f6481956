"""MOTChallenge ground truth (CVAT's "MOT 1.1", TrackEval's MOT layout): a tracked video
task's boxes (a job run with `track`), one sequence folder per video:

    <out>/<video id>/gt/gt.txt      a line per tracked box: frame,track,x,y,w,h,1,class,1
                                    (the id's empty, `.` and `..` parts dropped: sequence_name)
    <out>/<video id>/gt/labels.txt  the class names, one a line; class ids count from 1
    <out>/<video id>/seqinfo.ini    name, frameRate, seqLength, imWidth, imHeight (TrackEval)
    <out>/seqmap.txt                `name`, then each sequence (TrackEval's SEQMAP_FILE)

frame: the frame's index in the video plus one (MOT counts frames from 1), so a sampled
frame's boxes land on that frame of the whole video when CVAT imports them, and the frames
between have none. track: the box's track id in its video. x, y, w, h: top-left corner and
size in pixels of the frame as displayed (rotation applied), 3 decimals. The 7th column is
1 (not ignored), the 9th the visibility, 1 (the model does not say). Lines are sorted by
frame, then track. With `interpolate`, every frame between two boxes of a track gets a
line too, the box moved linearly between them: dense ground truth from sampled frames. A
box in no track (track_id null: a low-scored box that continued no
track, or a track shorter than min_length) has no line; the export counts them.

Rows come video by video (a video's rows are together and in time order in a job output),
so memory holds one video's lines; seqmap.txt is written last.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from labeler.export.categories import Categories
from labeler.export.images import relative_parts
from labeler.export.rows import ExportError, Row, TrackCount, videos_of
from labeler.export.target import Target

SEQMAP_FILE = "seqmap.txt"
COORD_DECIMALS = 3  # a thousandth of a pixel, as the COCO export writes boxes


def gt_lines(frames: list[Row], categories: Categories,
             interpolate: bool = False) -> tuple[str, int, int]:
    """gt.txt of one video's frame rows -> (its text, boxes left out for having no track,
    boxes interpolated). interpolate: also a line for every frame between two consecutive
    boxes of a track, its box moved linearly from the one to the other, with the class of
    the earlier one."""
    tracks: dict[int, list[tuple[int, tuple[float, ...], int]]] = {}
    untracked = 0
    for row in frames:
        for box in row.boxes:
            if box.track_id is None:
                untracked += 1
                continue
            tracks.setdefault(box.track_id, []).append(
                (row.frame_index, (box.x0, box.y0, box.x1, box.y1),
                 categories.index(box.label) + 1))
    lines, interpolated = [], 0
    for track, boxes in tracks.items():
        for k, (frame, corners, category) in enumerate(boxes):
            lines.append((frame + 1, track, corners, category))
            if not interpolate or k + 1 == len(boxes):
                continue
            next_frame, next_corners, _ = boxes[k + 1]
            for between in range(frame + 1, next_frame):
                t = (between - frame) / (next_frame - frame)
                lines.append((between + 1, track,
                              tuple(a + t * (b - a) for a, b in zip(corners, next_corners)),
                              category))
                interpolated += 1
    lines.sort(key=lambda line: line[:2])
    text = "".join(f"{f},{t},{_xywh(corners)},1,{c},1\n" for f, t, corners, c in lines)
    return text, untracked, interpolated


def _xywh(corners: tuple[float, ...]) -> str:
    x0, y0, x1, y1 = corners
    return ",".join(_number(v) for v in (x0, y0, x1 - x0, y1 - y0))


def _number(value: float) -> str:
    """A pixel coordinate to COORD_DECIMALS, trailing zeros dropped: 1919.875, 10.5, 3
    (not `:g`, whose 6 significant digits would cut 1919.875 to 1919.88)."""
    text = f"{value:.{COORD_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def seqinfo(frames: list[Row]) -> str:
    """seqinfo.ini of one video: its length in frames is the container's duration x frame
    rate, or one past its last labeled frame when that is more or the container is silent."""
    first, video = frames[0], frames[0].video or {}
    fps, duration = video.get("fps"), video.get("duration_s")
    length = max(row.frame_index for row in frames) + 1
    if fps and duration:
        length = max(length, round(fps * duration))
    # An integer in MOT's files; half up (12.5 -> 13, not Python's 12) and at least 1.
    rate = max(1, math.floor(fps + 0.5)) if fps else None
    fields = {"name": first.id, "imDir": "img1", "frameRate": rate,
              "seqLength": length, "imWidth": first.width, "imHeight": first.height,
              "imExt": ".jpg"}
    return "[Sequence]\n" + "".join(f"{k}={v}\n" for k, v in fields.items() if v is not None)


def sequence_name(video_id: str) -> str:
    """A video's sequence folder, relative to the output: its id as a relative path that
    stays inside it (labeler.export.images.relative_parts, as images are named).
    ExportError for an id that gives no folder."""
    parts = relative_parts(video_id)
    if parts is None:
        raise ExportError(f"the video id {video_id!r} gives no sequence folder name")
    return "/".join(parts)


def write_mot(rows: Iterable[Row], categories: Categories, target: Target,
              interpolate: bool = False) -> TrackCount:
    """Write a sequence folder per video of `rows` (video frame rows, in job output order),
    then seqmap.txt; interpolate: see gt_lines."""
    count, names, taken = TrackCount(), [], set()
    labels = "".join(f"{name}\n" for name in categories.names).encode()
    for frames in videos_of(rows):
        name = sequence_name(frames[0].id)
        if name in taken:
            raise ExportError(f"videos {frames[0].id!r} and another before it share the "
                              f"sequence folder {name!r}")
        text, untracked, interpolated = gt_lines(frames, categories, interpolate)
        target.write(f"{name}/gt/gt.txt", text.encode())
        target.write(f"{name}/gt/labels.txt", labels)
        target.write(f"{name}/seqinfo.ini", seqinfo(frames).encode())
        names.append(name)
        taken.add(name)
        count.sequences += 1
        count.frames += len(frames)
        count.boxes += text.count("\n")
        count.untracked_boxes += untracked
        count.interpolated_boxes += interpolated
    with target.final(SEQMAP_FILE) as out:
        out.write("".join(f"{line}\n" for line in ["name", *names]).encode())
    return count
