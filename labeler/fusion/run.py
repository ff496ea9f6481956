"""`labeler fuse`: the boxes of several tasks of one job (say OWLv2 and Florence-2 over the
same images), fused image by image into one task (weighted boxes fusion, labeler.fusion.wbf),
written as a job output that export, eval, stats and preview read like any other.

    1. the job output and its task folders (labeler.export.rows.JobOutput); each task named
       must hold boxes of one image or frame per row (FUSED_KINDS), the settings are checked
       (FuseSettings), and every task must hold the same part files with the same rows
       (id, and a video row's frame or clip): anything else is refused before a file is
       written, naming the task, part and row
    2. part by part (in worker processes, one per CPU by default: fusing is Python code),
       the tasks' rows of an input are fused into one row (labeler.fusion.records: the
       first task's row with the fused boxes, a row whose input failed in any task an error
       row naming each task's error); with `track`, each video's fused boxes are linked
    3. `<out>/<name>/part-NNNNN.parquet` (each staged and renamed, as a job's), and, when the
       job had finished, `<out>/_SUCCESS` with the settings and the counts, written last

Fusion reads the job output and writes a new one: trying other weights or thresholds
(`labeler eval` after each) costs a read of the tasks, not a GPU job.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, ValidationError, model_validator

from labeler.config import SpecError, TrackingSpec
from labeler.export.rows import JobOutput, TaskFolder
from labeler.export.target import Target
from labeler.fusion.records import FUSED_KINDS, FusionSpec, RecordFuser, fused_kind
from labeler.fusion.wbf import FusionCount
from labeler.schemas.record import RECORD_SCHEMA
from labeler.storage import storage_error
from labeler.tracking import add_track_ids, count_tracks

SUCCESS = "_SUCCESS"
# What tells an input's rows apart in a task: the input, and a video row's frame or clip.
KEY_COLUMNS = ("id", "frame_index", "clip_start_s")
# The columns of each task's rows that fusing reads and replaces (the first task's row is the
# fused row's base).
SOURCE_COLUMNS = ("detections", "error", "warnings", "parameters")


class FuseSettings(FusionSpec):
    """The fusion's settings, checked before anything is read (a bad one is named)."""

    tasks: list[str] = Field(min_length=2, description="task folders to fuse, at least two")
    name: str = Field("fused", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="the fused task's folder and task_name")
    track: TrackingSpec | None = Field(None, description="video frames: link each video's "
                                                         "fused boxes into tracks")

    @model_validator(mode="after")
    def _consistent(self) -> FuseSettings:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: {self.tasks} names a task twice")
        self.check_sources(len(self.tasks))
        return self


@dataclass(frozen=True)
class FuseOptions:
    """What `labeler fuse` was asked: output: the job output; out: where the fused task goes
    (empty, or overwrite); settings: FuseSettings fields."""

    output: str
    out: str
    settings: dict = field(default_factory=dict)
    overwrite: bool = False
    workers: int | None = None  # processes fusing part files (None: one per CPU)


@dataclass
class FuseSummary:
    settings: FuseSettings
    files: int
    done: PartCount
    output: str
    finished: bool

    @property
    def count(self) -> FusionCount:
        return self.done.count

    def lines(self) -> list[str]:
        s, done = self.settings, self.done
        boxes_in = ", ".join(f"{t} {n}" for t, n in zip(s.tasks, self.count.boxes_in))
        out = [f"fused {', '.join(s.tasks)} into {s.name}: {self.files} files, {done.rows} rows "
               f"({done.error_rows} error rows)",
               f"boxes in: {boxes_in}; out: {self.count.boxes_out}",
               f"dropped: {self.count.under_min_score} under min score, {self.count.no_area} "
               f"of no area, {self.count.too_few_models} found by fewer than {s.min_models} "
               f"tasks"]
        if s.track is not None:
            out.append(f"tracks: {done.tracks} ({json.dumps(s.track.model_dump())})")
        if not self.finished:
            out.append("warning: the job has no _SUCCESS: it did not finish, so the fused "
                       "output has none either")
        return out + [f"output: {self.output}"]

    def report(self) -> dict:
        track = self.settings.track
        return {"fuse": self.settings.recorded(self.settings.tasks), "task": self.settings.name,
                "track": None if track is None else track.model_dump(mode="json"),
                "tracks": None if track is None else self.done.tracks,
                "files": self.files, "rows": self.done.rows, "error_rows": self.done.error_rows,
                "boxes_in": dict(zip(self.settings.tasks, self.count.boxes_in)),
                "boxes_out": self.count.boxes_out,
                "dropped": {"under_min_score": self.count.under_min_score,
                            "no_area": self.count.no_area,
                            "too_few_models": self.count.too_few_models}}


def run_fuse(options: FuseOptions) -> FuseSummary:
    """Write the fused task (module docstring); SpecError when it cannot be done as asked,
    StorageError when a location cannot be used."""
    try:
        settings = FuseSettings.model_validate(options.settings)
    except ValidationError as err:
        raise _settings_error(err) from None
    job = JobOutput(options.output)
    folders, parts, frames = paired_tasks(job, settings.tasks)
    if settings.track is not None and not frames:
        raise SpecError("track: the tasks label no video frames; tracks link the boxes of a "
                        "video job's frames (labeler run --media video)")

    target = Target(options.out)
    target.check_empty(options.overwrite, job.uri)
    target.clear()
    fuser = PartFuser(job.fs, folders, settings, target)
    done = PartCount(count=FusionCount(boxes_in=[0] * len(folders)))
    try:
        for part_count in _map_parts(fuser, parts, options.workers):
            done.add(part_count)
    except OSError as err:
        raise storage_error(job.uri, "read the job output", err) from None
    summary = FuseSummary(settings, len(parts), done, target.uri, job.finished)
    if job.finished:
        with target.final(SUCCESS) as out:
            out.write(json.dumps(summary.report(), indent=2).encode())
    return summary


def _map_parts(fuser: PartFuser, parts: list[str], workers: int | None) -> Iterator[PartCount]:
    """Each part fused and written, in worker processes (fusion is Python, held by the GIL):
    `workers` of them, default one per CPU; in this process when one is enough."""
    workers = min(workers or os.cpu_count() or 1, len(parts))
    if workers <= 1:
        yield from map(fuser.write, parts)
        return
    # spawn, not fork: this process may hold pyarrow's and Ray's threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(fuser,)) as pool:
        yield from pool.map(_write_part, parts)


_worker_fuser: PartFuser | None = None  # a worker process's PartFuser (_start_worker)


def _start_worker(fuser: PartFuser) -> None:
    global _worker_fuser
    _worker_fuser = fuser


def _write_part(part: str) -> PartCount:
    assert _worker_fuser is not None, "_start_worker runs first in every worker"
    return _worker_fuser.write(part)


def _settings_error(err: ValidationError) -> SpecError:
    """One line per problem, `field: message` (a check across fields, such as the weights
    against the tasks, names its field at the start of its message)."""
    lines = []
    for error in err.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        lines.append(f"{where}: {message}" if where else message)
    return SpecError("invalid fuse settings:\n  " + "\n  ".join(lines))


def paired_tasks(job: JobOutput, names: list[str]) -> tuple[list[TaskFolder], list[str], bool]:
    """The task folders `names`, checked to hold boxes (FUSED_KINDS) and the same part
    files with the same rows -> (folders, part file names, whether some row is a video
    frame); SpecError naming the task, part or row otherwise. Reads the key columns alone."""
    folders = [_fusable(job.named(name)) for name in names]
    parts = _parts(folders)
    return folders, parts, _check_rows(job, folders, parts)


def paired_rows(fs: pafs.FileSystem, folders: list[TaskFolder], part: str,
                columns: tuple[str, ...], first: pa.Table | None = None
                ) -> Iterator[list[dict]]:
    """One part file of paired tasks (paired_tasks) -> each input's rows of every task in
    `folders` order, in the first task's row order, as dicts of the key columns and
    `columns` (the first task's with its width and height too). first: the first task's
    table of that part, when the caller has read it already."""
    if first is None:
        held = pq.read_schema(_path(folders[0], part), filesystem=fs).names
        first = pq.read_table(_path(folders[0], part), filesystem=fs, columns=[
            c for c in (*KEY_COLUMNS, "width", "height", *columns) if c in held])
    names = [c for c in KEY_COLUMNS if c in first.schema.names]
    firsts = first.select([*names, "width", "height", *columns]).to_pylist()
    others = [_rows_by_key(fs, folder, part, columns) for folder in folders[1:]]
    for row in firsts:
        key = tuple(row[c] for c in names)
        yield [row, *(by_key[key] for by_key in others)]


def _rows_by_key(fs: pafs.FileSystem, folder: TaskFolder, part: str,
                 columns: tuple[str, ...]) -> dict[tuple, dict]:
    table = pq.read_table(_path(folder, part), filesystem=fs)
    names = [c for c in KEY_COLUMNS if c in table.schema.names]
    rows = table.select([*names, *columns]).to_pylist()
    return {tuple(row[c] for c in names): row for row in rows}


def _fusable(folder: TaskFolder) -> TaskFolder:
    if folder.kind not in FUSED_KINDS:
        raise SpecError(f"task {folder.name!r} is a {folder.kind} task; fuse takes tasks "
                        f"whose rows hold an image's boxes: {', '.join(FUSED_KINDS)}")
    return folder


def _parts(folders: list[TaskFolder]) -> list[str]:
    """The part file names every task holds; SpecError naming one that a task lacks."""
    names = [{path.rpartition("/")[2] for path in folder.files} for folder in folders]
    for folder, held in zip(folders[1:], names[1:]):
        for missing, lacking in ((names[0] - held, folder), (held - names[0], folders[0])):
            if missing:
                raise SpecError(f"task {lacking.name!r} has no {sorted(missing)[0]} (of "
                                f"{len(missing)} part files the other tasks hold): fuse "
                                f"takes tasks of one job that has written them all (resume "
                                f"it first)")
    return sorted(names[0])


def _check_rows(job: JobOutput, folders: list[TaskFolder], parts: list[str]) -> bool:
    """Every task's part holds the same rows (KEY_COLUMNS); SpecError naming one that is in
    one task only. Reads the key columns alone, before anything is written. Whether some
    row is a video frame."""
    frames = False
    for part in parts:
        keys = [_keys(job, folder, part) for folder in folders]
        frames = frames or any(len(key) > 1 and key[1] != -1 for key in keys[0])
        for folder, held in zip(folders[1:], keys[1:]):
            for only, here in ((keys[0] - held, folders[0]), (held - keys[0], folder)):
                if only:
                    raise SpecError(f"{part} of task {here.name!r} holds {_describe(min(only))}"
                                    f", which the other tasks do not ({len(only)} such rows): "
                                    f"fuse takes tasks of one job over the same inputs and "
                                    f"video frames")
    return frames


def _keys(job: JobOutput, folder: TaskFolder, part: str) -> set[tuple]:
    path = _path(folder, part)
    held = pq.read_schema(path, filesystem=job.fs).names
    table = pq.read_table(path, columns=[c for c in KEY_COLUMNS if c in held],
                          filesystem=job.fs)
    columns = [column.to_pylist() for column in table.columns]
    return {tuple((-1 if v is None else v) for v in row) for row in zip(*columns)}


def _describe(key: tuple) -> str:
    described = f"input {key[0]!r}"
    if len(key) > 1 and key[1] != -1:
        described += f" frame {key[1]}"
    if len(key) > 2 and key[2] != -1:
        described += f" clip at {key[2]} s"
    return described


def _path(folder: TaskFolder, part: str) -> str:
    return next(p for p in folder.files if p.rpartition("/")[2] == part)


@dataclass
class PartCount:
    """What fusing some part files did: rows written, error rows among them, boxes."""

    rows: int = 0
    error_rows: int = 0
    count: FusionCount = field(default_factory=FusionCount)
    tracks: int = 0

    def add(self, other: PartCount) -> None:
        self.rows += other.rows
        self.error_rows += other.error_rows
        self.tracks += other.tracks
        self.count.add(other.count)


class PartFuser:
    """Fuses the tasks' rows of one part file and writes them (picklable: it travels to
    worker processes)."""

    def __init__(self, fs: pafs.FileSystem, folders: list[TaskFolder], settings: FuseSettings,
                 target: Target):
        self.fs, self.folders, self.settings, self.target = fs, folders, settings, target
        self.records = RecordFuser(settings.tasks, settings,
                                   fused_kind([folder.kind for folder in folders]),
                                   settings.name, settings.track)

    def write(self, part: str) -> PartCount:
        """`<out>/<name>/<part>`: the part's fused rows; what fusing them did."""
        done = PartCount(count=FusionCount(boxes_in=[0] * len(self.folders)))
        table = self.fuse(part, done)
        if self.settings.track is not None:  # a part holds whole videos, in time order
            table = add_track_ids(table, self.settings.track)
            done.tracks = count_tracks(table)
        with self.target.final(f"{self.settings.name}/{part}") as out:
            pq.write_table(table, out, compression="zstd")  # as the job's sink writes
        return done

    def fuse(self, part: str, done: PartCount) -> pa.Table:
        """The part's fused rows: the first task's table with the record's columns replaced
        (labeler.fusion.records)."""
        base = pq.read_table(_path(self.folders[0], part), filesystem=self.fs)
        fused: dict[str, list] = {c: [] for c in SOURCE_COLUMNS}
        for rows in paired_rows(self.fs, self.folders, part, SOURCE_COLUMNS, base):
            fields = self.records.fields(rows, done.count)
            for column, values in fused.items():
                values.append(fields[column])
            done.rows += 1
            done.error_rows += fields["error"] is not None
        return self._table(base, fused)

    def _table(self, base: pa.Table, fused: dict[str, list]) -> pa.Table:
        columns = {name: [value] * base.num_rows
                   for name, value in self.records.constants.items()}
        for name, values in {**columns, **fused}.items():
            schema_field = RECORD_SCHEMA.field(name)
            array = pa.array(values, type=schema_field.type)
            k = base.schema.get_field_index(name)
            base = (base.set_column(k, schema_field, array) if k >= 0
                    else base.append_column(schema_field, array))
        return base
