"""One task of a job's output, read for export: its task folders, which of them hold boxes,
and the rows to export, batch by batch.

A job output is `<root>/<task name>/part-NNNNN.parquet` (labeler.sinks.parquet), on a local
disk or under an s3:// prefix; a folder's task kind is the `task` column of its rows. Rows are
read with pyarrow.dataset, one file at a time in name order (so the order, and the ids an
export gives to images, are the same on every run), READ_BATCH_ROWS rows at a time and only
the columns an export needs: memory holds one batch, whatever the number of rows.

What is not exported is counted in a Tally: error rows (with their reasons), pseudo-label
rows marked `kept = false` (unless include_not_kept), boxes scoring under min_score.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from labeler.config import SpecError
from labeler.pseudo.filtering import reason_kind
from labeler.sinks.parquet import MANIFEST_FILE, SUCCESS_FILE
from labeler.storage import filesystem_for, storage_error

# Task kinds whose rows carry boxes (`detections`); every other kind gives text.
BOX_TASKS = ("detect", "ground", "detect-by-example", "pseudo-label", "regions")
# The columns an export reads (those a v1 output lacks are left out).
COLUMNS = ("id", "uri", "width", "height", "parameters", "detections", "error", "kept",
           "filter_reason", "frame_index", "timestamp_s", "video")
# What names the model of a task (the same in all its rows).
MODEL_COLUMNS = ("model", "model_family", "model_revision")
# Rows per read: 1024 rows of even a few hundred boxes each are a few MB of Python objects.
READ_BATCH_ROWS = 1024
# Distinct error reasons counted one by one; further ones are counted together, so reasons
# that name a path each (`cannot read input: ...`) cannot grow the tally without bound.
ERROR_REASONS_KEPT = 100
# The category of boxes with an empty label (Florence-2 `<REGION_PROPOSAL>`: class-agnostic).
UNNAMED_LABEL = "object"


class ExportError(SpecError):
    """An export that cannot be done as asked; the message says why and what to do."""


def not_parquet(uri: str, err: pa.ArrowInvalid) -> ExportError:
    """A job output holding a file that is no Parquet (pyarrow's message names the file).
    The first pass reads every file before anything is written, so nothing is exported."""
    return ExportError(f"{uri!r} holds a file that is not readable Parquet, so it is not a "
                       f"labeler job output as written: {err}")


@dataclass(frozen=True)
class Box:
    """One box: its label, score in [0, 1], corners in pixels of the oriented image, and
    its track in its video (1, 2, ...) when the job linked boxes into tracks."""

    label: str
    score: float
    x0: float
    y0: float
    x1: float
    y1: float
    track_id: int | None = None


@dataclass(frozen=True)
class Row:
    """A row to export: one image, or one frame of a video (frame_index, timestamp_s set), or
    a slice of an image (window set). width, height: the oriented image's (or frame's, or
    slice's) size in pixels, which boxes refer to."""

    id: str
    uri: str
    width: int
    height: int
    boxes: tuple[Box, ...]
    frame_index: int | None = None
    timestamp_s: float | None = None
    video: dict | None = None  # a frame's video as probed: width, height, duration_s, fps, codec
    # A slice of the image (labeler.export.slices): its x0, y0, x1, y1 in the oriented image;
    # width, height and boxes are then the slice's.
    window: tuple[int, int, int, int] | None = None


@dataclass
class TrackCount:
    """What an export of a tracked video task wrote (videos, their frame rows, boxes) and
    left out (boxes in no track)."""

    sequences: int = 0
    frames: int = 0
    boxes: int = 0  # interpolated ones included
    untracked_boxes: int = 0
    interpolated_boxes: int = 0  # mot --interpolate: lines between a track's boxes


def boxes_of(detections: list[dict] | None) -> list[Box]:
    """A row's `detections` (records' dicts) -> its Boxes; an empty label is UNNAMED_LABEL."""
    return [Box(d["label"] or UNNAMED_LABEL, d["score"], d["x0"], d["y0"], d["x1"], d["y1"],
                d.get("track_id")) for d in detections or []]


def videos_of(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """The rows of each video in turn: a run of rows with the same id (a video's rows are
    together, in time order, in a job output)."""
    batch: list[Row] = []
    for row in rows:
        if batch and row.id != batch[0].id:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


class Reasons:
    """Counts of reasons, the first `kept` distinct ones each on its own, the rest together."""

    def __init__(self, kept: int = ERROR_REASONS_KEPT):
        self.kept = kept
        self.counts: Counter[str] = Counter()
        self.others = 0

    def add(self, reason: str) -> None:
        if reason in self.counts or len(self.counts) < self.kept:
            self.counts[reason] += 1
        else:
            self.others += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values()) + self.others

    def top(self, n: int) -> list[tuple[str, int]]:
        """The n most frequent reasons (ties by text), then the others' count if any."""
        shown = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]
        hidden = self.total - sum(count for _, count in shown)
        return shown + ([("other reasons", hidden)] if hidden else [])


@dataclass
class Tally:
    """What one scan read and left out. task_labels: the `labels` lists of the rows'
    parameters, merged in order (the task's label order)."""

    rows: int = 0
    errors: Reasons = field(default_factory=Reasons)
    not_kept: Counter[str] = field(default_factory=Counter)  # skipped, by reason kind
    not_kept_exported: int = 0
    low_score_boxes: int = 0
    task_labels: list[str] = field(default_factory=list)
    parameters: list[dict] = field(default_factory=list)  # the distinct `parameters` seen
    _parameters_seen: set[str] = field(default_factory=set)

    @property
    def tracked(self) -> bool:
        """Every row read was labeled with `track` (its boxes carry track ids)."""
        return bool(self.parameters) and all("track" in p for p in self.parameters)

    def add_parameters(self, parameters: str | None) -> None:
        if parameters is None or parameters in self._parameters_seen:
            return
        self._parameters_seen.add(parameters)
        loaded = json.loads(parameters)
        if isinstance(loaded, dict):
            self.parameters.append(loaded)
        labels = loaded.get("labels") if isinstance(loaded, dict) else None
        for label in labels if isinstance(labels, list) else []:
            name = label or UNNAMED_LABEL
            if name not in self.task_labels:
                self.task_labels.append(name)


@dataclass(frozen=True)
class TaskFolder:
    """A task's output folder: its name, task kind, and its Parquet files (paths in the
    job's file system, in name order)."""

    name: str
    kind: str
    files: tuple[str, ...]
    model: dict = field(default_factory=dict)  # model, model_family, model_revision of a row


class JobOutput:
    """A job's output root (local folder or s3:// prefix) and its task folders."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, path = filesystem_for(self.uri)
        self.path = path.rstrip("/")
        try:
            info = self.fs.get_file_info(self.path)
            if info.type != pafs.FileType.Directory:
                raise ExportError(f"no job output at {self.uri!r}: expected a folder or s3:// "
                                  f"prefix holding <task>/part-NNNNN.parquet")
            entries = self.fs.get_file_info(pafs.FileSelector(self.path))
            self.finished = (self.fs.get_file_info(f"{self.path}/{SUCCESS_FILE}").type
                             == pafs.FileType.File)
            self.tasks = [folder for entry in sorted(entries, key=lambda e: e.path)
                          if entry.type == pafs.FileType.Directory
                          and not entry.base_name.startswith((".", "_"))
                          and (folder := self._task_folder(entry)) is not None]
        except OSError as err:
            raise storage_error(self.uri, "read the job output", err) from None
        except pa.ArrowInvalid as err:
            raise not_parquet(self.uri, err) from None
        if not self.tasks and any(entry.base_name == MANIFEST_FILE for entry in entries):
            raise ExportError(f"no shard is committed yet in {self.uri!r}: its job is running, "
                              f"or stopped before its first shard (a rerun resumes it)")
        if not self.tasks:
            raise ExportError(f"no task folders in {self.uri!r}: a job output holds "
                              f"<task>/part-NNNNN.parquet (pass the job's --output)")

    def _task_folder(self, entry: pafs.FileInfo) -> TaskFolder | None:
        """The folder's task, from the `task` column of its first row (in the first file that
        has one: a shard may hold none), or when no file has a row from _job.json; None when
        it holds no record files (`*.parquet`; names starting with '.' or '_' are staging or
        reports)."""
        files = tuple(sorted(
            f.path for f in self.fs.get_file_info(pafs.FileSelector(entry.path))
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            and not f.base_name.startswith((".", "_"))))
        if not files:
            return None
        first: dict = {}
        for path in files:
            dataset = pads.dataset(path, format="parquet", filesystem=self.fs)
            if "task" not in dataset.schema.names:
                return None
            columns = [c for c in ("task", *MODEL_COLUMNS) if c in dataset.schema.names]
            rows = dataset.head(1, columns=columns).to_pylist()
            if rows:
                first = rows[0]
                break
        kind = first.get("task") or self._stored_kind(entry.base_name)
        if not kind:
            return None
        return TaskFolder(entry.base_name, kind, files, {c: first.get(c) for c in MODEL_COLUMNS})

    def _stored_kind(self, name: str) -> str | None:
        """The kind of task `name` in the identity _job.json holds; None without one."""
        manifest = self.manifest()
        try:
            return manifest["identity"]["tasks"][manifest["tasks"].index(name)]["task"]
        except (ValueError, LookupError, TypeError):
            return None

    def manifest(self) -> dict | None:
        """What _job.json holds (the job's tasks and identity, labeler.sinks.parquet); None
        when there is none or it is not a JSON object."""
        try:
            with self.fs.open_input_stream(f"{self.path}/{MANIFEST_FILE}") as f:
                manifest = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def pick(self, name: str | None) -> TaskFolder:
        """The task folder `name`, or with None the only one that holds boxes; ExportError
        naming the choices otherwise."""
        described = ", ".join(f"{t.name} ({t.kind})" for t in self.tasks)
        if name is None:
            boxed = [t for t in self.tasks if t.kind in BOX_TASKS]
            if len(boxed) == 1:
                return boxed[0]
            if not boxed:
                raise ExportError(f"no task with boxes in {self.uri!r} (it holds: {described}); "
                                  f"export and eval take the boxes of a task of kind "
                                  f"{', '.join(BOX_TASKS)}")
            raise ExportError(f"{len(boxed)} tasks with boxes in {self.uri!r}: "
                              f"{', '.join(t.name for t in boxed)}; choose one with --task")
        found = self.named(name)
        if found.kind not in BOX_TASKS:
            raise ExportError(f"task {name!r} is a {found.kind} task: its rows carry no boxes "
                              f"(tasks with boxes: {', '.join(BOX_TASKS)})")
        return found

    def named(self, name: str) -> TaskFolder:
        """The task folder `name`, of any kind; ExportError naming the folders otherwise."""
        found = [t for t in self.tasks if t.name == name]
        if not found:
            described = ", ".join(f"{t.name} ({t.kind})" for t in self.tasks)
            raise ExportError(f"no task folder {name!r} in {self.uri!r} (it holds: {described})")
        return found[0]


def read_ids(path: str, error: type[SpecError]) -> dict[str, int]:
    """{row id: position} of a local text file of ids, one a line (what `labeler select` and
    `labeler eval --worst-ids` write; blank lines and repeats skipped); `error` when it
    cannot be read or holds none."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"--ids-file {path!r}: cannot be read: {err}") from None
    ids = {row_id: k for k, row_id in enumerate(dict.fromkeys(x for x in lines if x))}
    if not ids:
        raise error(f"--ids-file {path!r} holds no row id (one id a line)")
    return ids


class TaskRows:
    """The rows of one task folder to export, filtered (see the module docstring).

    min_score: boxes scoring under it are dropped (None: all kept); include_not_kept: export
    pseudo-label rows with kept = false too; ids: only the rows of these ids are read (None:
    all)."""

    def __init__(self, job: JobOutput, folder: TaskFolder, min_score: float | None = None,
                 include_not_kept: bool = False, ids: Collection[str] | None = None):
        self.job, self.folder = job, folder
        self.min_score = min_score
        self.include_not_kept = include_not_kept
        self.ids = ids
        self.ids_found: set[str] = set()  # those of `ids` that were rows, once scanned

    def scan(self, tally: Tally, wanted: Callable[[str], bool] | None = None) -> Iterator[Row]:
        """Every row to export, in file and row order; what is left out goes to `tally`.
        wanted: only rows whose id it accepts are read and counted; the others are dropped
        before their boxes become Python objects (eval reads a few images of a big job)."""
        if self.ids is not None:
            wanted = self._among_ids if wanted is None else (
                lambda row_id, asked=wanted: self._among_ids(row_id) and asked(row_id))
        for batch in self.batches(COLUMNS):
            if wanted is not None:
                ids = batch.column("id").to_pylist()
                batch = batch.filter(pa.array([wanted(i) for i in ids], pa.bool_()))
            yield from self._rows(batch.to_pydict(), batch.num_rows, tally)

    def _among_ids(self, row_id: str) -> bool:
        if row_id in self.ids:
            self.ids_found.add(row_id)
            return True
        return False

    def batches(self, columns: Iterable[str]) -> Iterator[pa.RecordBatch]:
        """The folder's rows, unfiltered, as record batches of at most READ_BATCH_ROWS rows in
        file and row order, holding those of `columns` the files have (an older output lacks
        some). ExportError for a file that is not Parquet, StorageError when the output
        cannot be read."""
        try:
            dataset = pads.dataset(list(self.folder.files), format="parquet",
                                   filesystem=self.job.fs)
            names = [c for c in columns if c in dataset.schema.names]
            for fragment in dataset.get_fragments():  # in the order of `files`
                yield from fragment.to_batches(schema=dataset.schema, columns=names,
                                               batch_size=READ_BATCH_ROWS)
        except OSError as err:
            raise storage_error(self.job.uri, "read the job output", err) from None
        except pa.ArrowInvalid as err:
            raise not_parquet(self.job.uri, err) from None

    def _rows(self, cols: dict[str, list], n: int, tally: Tally) -> Iterator[Row]:
        nothing = [None] * n
        kept, reasons, frames, times, videos = (
            cols.get(c, nothing) for c in ("kept", "filter_reason", "frame_index", "timestamp_s",
                                           "video"))
        for i in range(n):
            tally.rows += 1
            tally.add_parameters(cols["parameters"][i])
            if cols["error"][i] is not None:
                tally.errors.add(cols["error"][i])
                continue
            if kept[i] is False:
                if not self.include_not_kept:
                    tally.not_kept[reason_kind(reasons[i] or "no reason given")] += 1
                    continue
                tally.not_kept_exported += 1
            boxes = boxes_of(cols["detections"][i])
            if self.min_score is not None:
                scored = [b for b in boxes if b.score >= self.min_score]
                tally.low_score_boxes += len(boxes) - len(scored)
                boxes = scored
            yield Row(cols["id"][i], cols["uri"][i], cols["width"][i], cols["height"][i],
                      tuple(boxes), frames[i], times[i], videos[i])
