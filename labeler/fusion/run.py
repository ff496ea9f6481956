"""`labeler fuse`: the boxes of several tasks over the same images (say OWLv2 and Florence-2,
in one job or in separate jobs), fused image by image into one task (weighted boxes fusion,
labeler.fusion.wbf), written as a job output that export, eval, stats and preview read like
any other.

    1. the job outputs and their task folders (labeler.export.rows.JobOutput): two or more
       tasks of one output, or one task of each output; each must hold boxes of one image or
       frame per row (FUSED_KINDS), the settings are checked (FuseSettings), and every task
       must hold the same part files with the same rows (id, and a video row's frame or
       clip; separate jobs over the same input with the same files_per_shard do): anything
       else is refused before a file is written, naming the task, part and row
    2. part by part (in worker processes, one per CPU by default: fusing is Python code),
       the tasks' rows of an input are fused into one row (labeler.fusion.records: the
       first task's row with the fused boxes, a row whose input failed in any task an error
       row naming each task's error); with `track`, each video's fused boxes are linked
    3. `<out>/<name>/part-NNNNN.parquet` (each staged and renamed, as a job's), and, when
       every job had finished, `<out>/_SUCCESS` with the settings and the counts, written last

Fusion reads job outputs and writes a new one: trying other weights or thresholds
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
from pydantic import Field, ValidationError

from labeler.config import SpecError, TrackingSpec
from labeler.export.rows import JobOutput, TaskFolder, not_parquet
from labeler.export.target import Target
from labeler.fusion.records import (FUSED_KINDS, FusionSpec, RecordFuser, distinct_names,
                                    fused_kind)
from labeler.fusion.wbf import FusionCount
from labeler.schemas.record import RECORD_SCHEMA
from labeler.sinks.parquet import SUCCESS_FILE
from labeler.storage import storage_error
from labeler.tracking import add_track_ids, count_tracks

# What tells an input's rows apart in a task: the input, and a video row's frame or clip.
KEY_COLUMNS = ("id", "frame_index", "clip_start_s")
# The columns of each task's rows that fusing reads and replaces (the first task's row is the
# fused row's base).
SOURCE_COLUMNS = ("detections", "error", "warnings", "parameters")


class FuseSettings(FusionSpec):
    """The fusion's settings, checked before anything is read (a bad one is named)."""

    tasks: list[str] = Field(default_factory=list, description=(
        "task folders to fuse: at least two of one job output, or one per job output given "
        "(default then: each output's only task with boxes)"))
    name: str = Field("fused", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="the fused task's folder and task_name")
    track: TrackingSpec | None = Field(None, description="video frames: link each video's "
                                                         "fused boxes into tracks")


@dataclass(frozen=True)
class FuseOptions:
    """What `labeler fuse` was asked: outputs: the job outputs (one, or one per task when the
    tasks were labeled by separate jobs over the same inputs); out: where the fused task goes
    (empty, or overwrite); settings: FuseSettings fields."""

    outputs: tuple[str, ...]
    out: str
    settings: dict = field(default_factory=dict)
    overwrite: bool = False
    workers: int | None = None  # processes fusing part files (None: one per CPU)


@dataclass(frozen=True)
class Source:
    """One task fused: its job output's file system and URI, its folder, and the name the
    fused rows give it (the folder's; a second folder of that name, from another job output,
    `name#2`). Picklable: it travels to worker processes."""

    fs: pafs.FileSystem
    uri: str
    folder: TaskFolder
    name: str

    def path(self, part: str) -> str:
        return next(p for p in self.folder.files if p.rpartition("/")[2] == part)


@dataclass
class FuseSummary:
    settings: FuseSettings
    names: list[str]
    files: int
    done: PartCount
    output: str
    finished: bool

    @property
    def count(self) -> FusionCount:
        return self.done.count

    def lines(self) -> list[str]:
        s, done = self.settings, self.done
        boxes_in = ", ".join(f"{t} {n}" for t, n in zip(self.names, self.count.boxes_in))
        out = [f"fused {', '.join(self.names)} into {s.name}: {self.files} files, {done.rows} "
               f"rows ({done.error_rows} error rows)",
               f"boxes in: {boxes_in}; out: {self.count.boxes_out}",
               f"dropped: {self.count.under_min_score} under min score, {self.count.no_area} "
               f"of no area, {self.count.too_few_models} found by fewer than {s.min_models} "
               f"tasks"]
        if s.track is not None:
            out.append(f"tracks: {done.tracks} ({json.dumps(s.track.model_dump())})")
        unused = [label for label in s.rename if not self.count.renamed.get(label)]
        if unused:
            out.append(f"warning: --rename {', '.join(unused)}: no box of the tasks had that "
                       f"label (is it spelled as the tasks' labels are?)")
        if not self.finished:
            out.append("warning: a job output has no _SUCCESS: its job did not finish, so "
                       "the fused output has none either")
        return out + [f"output: {self.output}"]

    def report(self) -> dict:
        track = self.settings.track
        return {"fuse": self.settings.recorded(self.names), "task": self.settings.name,
                "track": None if track is None else track.model_dump(mode="json"),
                "tracks": None if track is None else self.done.tracks,
                "files": self.files, "rows": self.done.rows, "error_rows": self.done.error_rows,
                "boxes_in": dict(zip(self.names, self.count.boxes_in)),
                "boxes_out": self.count.boxes_out,
                "renamed": {label: self.count.renamed.get(label, 0)
                            for label in self.settings.rename},
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
    jobs = [JobOutput(output) for output in options.outputs]
    sources = task_sources(jobs, settings.tasks)
    try:
        settings.check_sources(len(sources))
    except ValueError as err:  # "field: message"
        field, _, message = str(err).partition(": ")
        raise SpecError(f"invalid fuse settings:\n  {_flag((field,))}: {message}") from None
    try:
        parts, frames = paired_sources(sources)
    except pa.ArrowInvalid as err:  # read before anything is written
        raise not_parquet(uris_of(jobs), err) from None
    if settings.track is not None and not frames:
        raise SpecError("--track: the tasks label no video frames; tracks link the boxes of a "
                        "video job's frames (labeler run --media video)")

    target = Target(options.out)
    for job in jobs:
        target.check_empty(options.overwrite, job.uri)
    target.clear()
    fuser = PartFuser(sources, settings, target)
    done = PartCount(count=FusionCount(boxes_in=[0] * len(sources)))
    try:
        for part_count in _map_parts(fuser, parts, options.workers):
            done.add(part_count)
    except OSError as err:
        raise storage_error(uris_of(jobs), "read the job output", err) from None
    except pa.ArrowInvalid as err:
        raise not_parquet(uris_of(jobs), err) from None
    finished = all(job.finished for job in jobs)
    summary = FuseSummary(settings, [source.name for source in sources], len(parts), done,
                          target.uri, finished)
    if finished:
        with target.final(SUCCESS_FILE) as out:
            out.write(json.dumps(summary.report(), indent=2).encode())
    return summary


def uris_of(outputs: list[JobOutput] | list[Source]) -> str:
    """The job outputs' URIs, each once, for a message."""
    return " and ".join(dict.fromkeys(output.uri for output in outputs))


def task_sources(jobs: list[JobOutput], tasks: list[str]) -> list[Source]:
    """The tasks to fuse: `tasks` of the one job output, or one per output (`tasks` in their
    order, or each one's only task with boxes); SpecError naming what is wrong."""
    if len(jobs) == 1:
        job = jobs[0]
        if len(tasks) < 2 or len(set(tasks)) != len(tasks):
            raise SpecError(f"--tasks: fuse takes two or more distinct tasks of {job.uri!r} "
                            f"(--tasks a,b), or one task of each of several job outputs (got "
                            f"{', '.join(tasks) or 'none'})")
        picked = [(job, fusable_task(job.named(name))) for name in tasks]
    else:
        if tasks and len(tasks) != len(jobs):
            raise SpecError(f"--tasks: {len(tasks)} given for {len(jobs)} job outputs; give one "
                            f"per output, in their order, or none (each output's only task "
                            f"with boxes)")
        picked = [(job, fusable_task(job.named(tasks[k]) if tasks else _only_box_task(job)))
                  for k, job in enumerate(jobs)]
        # The same task reached twice (one output given twice, or by two spellings of its
        # path): its boxes would agree with themselves. Its files say it is the same.
        seen: dict[tuple[str, ...], int] = {}
        for k, (job, folder) in enumerate(picked):
            if folder.files in seen:
                first = seen[folder.files]
                raise SpecError(f"task {folder.name!r} of {job.uri!r} is given twice (job "
                                f"outputs {first + 1} and {k + 1}); fuse distinct tasks")
            seen[folder.files] = k
    names = distinct_names([folder.name for _, folder in picked])
    return [Source(job.fs, job.uri, folder, name) for (job, folder), name in zip(picked, names)]


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
    """One line per problem, `--flag: message`."""
    lines = []
    for error in err.errors():
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_flag(error['loc'])}: {message}" if error["loc"] else message)
    return SpecError("invalid fuse settings:\n  " + "\n  ".join(lines))


def _flag(loc: tuple) -> str:
    """The flag that gives a setting (a field's path): min_models -> --min-models, weights.1
    -> --weights, track.max_missed -> --track-max-missed."""
    names = loc[:2] if loc[0] == "track" else loc[:1]
    return "--" + "-".join(map(str, names)).replace("_", "-")


def paired_sources(sources: list[Source]) -> tuple[list[str], bool]:
    """The tasks' part files, checked to be the same, with the same rows -> (part file names,
    whether some row is a video frame); SpecError naming the task, part or row otherwise.
    Reads the key columns alone."""
    parts = _parts(sources)
    return parts, _check_rows(sources, parts)


def paired_rows(sources: list[Source], part: str, columns: tuple[str, ...],
                first: pa.Table | None = None) -> Iterator[list[dict]]:
    """One part file of paired tasks (paired_sources) -> each input's rows of every task in
    `sources` order, in the first task's row order, as dicts of the key columns and
    `columns` (the first task's with its width and height too). first: the first task's
    table of that part, when the caller has read it already."""
    if first is None:
        lead = sources[0]
        held = pq.read_schema(lead.path(part), filesystem=lead.fs).names
        first = pq.read_table(lead.path(part), filesystem=lead.fs, columns=[
            c for c in (*KEY_COLUMNS, "width", "height", *columns) if c in held])
    names = [c for c in KEY_COLUMNS if c in first.schema.names]
    firsts = first.select([*names, "width", "height", *columns]).to_pylist()
    others = [_rows_by_key(source, part, columns) for source in sources[1:]]
    for row in firsts:
        key = tuple(row[c] for c in names)
        yield [row, *(by_key[key] for by_key in others)]


def _rows_by_key(source: Source, part: str, columns: tuple[str, ...]) -> dict[tuple, dict]:
    table = pq.read_table(source.path(part), filesystem=source.fs)
    names = [c for c in KEY_COLUMNS if c in table.schema.names]
    rows = table.select([*names, *columns]).to_pylist()
    return {tuple(row[c] for c in names): row for row in rows}


def _only_box_task(job: JobOutput) -> TaskFolder:
    boxed = [folder for folder in job.tasks if folder.kind in FUSED_KINDS]
    if len(boxed) != 1:
        raise SpecError(f"{job.uri!r} holds {len(boxed)} tasks with boxes "
                        f"({', '.join(f.name for f in boxed) or 'none'}): name one task of each "
                        f"job output with --tasks, in their order")
    return boxed[0]


def fusable_task(folder: TaskFolder) -> TaskFolder:
    """`folder`, when its rows hold an image's boxes (FUSED_KINDS); SpecError otherwise."""
    if folder.kind not in FUSED_KINDS:
        raise SpecError(f"task {folder.name!r} is a {folder.kind} task; fuse takes tasks "
                        f"whose rows hold an image's boxes: {', '.join(FUSED_KINDS)}")
    return folder


def _parts(sources: list[Source]) -> list[str]:
    """The part file names every task holds; SpecError naming one that a task lacks."""
    names = [{path.rpartition("/")[2] for path in source.folder.files} for source in sources]
    for source, held in zip(sources[1:], names[1:]):
        for missing, lacking in ((names[0] - held, source), (held - names[0], sources[0])):
            if missing:
                raise SpecError(f"task {lacking.name!r} has no {sorted(missing)[0]} (of "
                                f"{len(missing)} part files the other tasks hold): fuse "
                                f"takes tasks over the same inputs, each written whole "
                                f"(resume an unfinished job first, and give separate jobs "
                                f"the same input and files_per_shard)")
    return sorted(names[0])


def _check_rows(sources: list[Source], parts: list[str]) -> bool:
    """Every task's part holds the same rows (KEY_COLUMNS); SpecError naming one that is in
    one task only. Reads the key columns alone, before anything is written. Whether some
    row is a video frame."""
    frames = False
    for part in parts:
        keys = [_keys(source, part) for source in sources]
        frames = frames or any(len(key) > 1 and key[1] != -1 for key in keys[0])
        for source, held in zip(sources[1:], keys[1:]):
            for only, here in ((keys[0] - held, sources[0]), (held - keys[0], source)):
                if only:
                    raise SpecError(f"{part} of task {here.name!r} holds {_describe(min(only))}"
                                    f", which the other tasks do not ({len(only)} such rows): "
                                    f"fuse takes tasks over the same inputs and video frames")
    return frames


def _keys(source: Source, part: str) -> set[tuple]:
    path = source.path(part)
    held = pq.read_schema(path, filesystem=source.fs).names
    table = pq.read_table(path, columns=[c for c in KEY_COLUMNS if c in held],
                          filesystem=source.fs)
    columns = [column.to_pylist() for column in table.columns]
    return {tuple((-1 if v is None else v) for v in row) for row in zip(*columns)}


def _describe(key: tuple) -> str:
    described = f"input {key[0]!r}"
    if len(key) > 1 and key[1] != -1:
        described += f" frame {key[1]}"
    if len(key) > 2 and key[2] != -1:
        described += f" clip at {key[2]} s"
    return described


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

    def __init__(self, sources: list[Source], settings: FuseSettings, target: Target):
        self.sources, self.settings, self.target = sources, settings, target
        self.records = RecordFuser([source.name for source in sources], settings,
                                   fused_kind([source.folder.kind for source in sources]),
                                   settings.name, settings.track)

    def write(self, part: str) -> PartCount:
        """`<out>/<name>/<part>`: the part's fused rows; what fusing them did."""
        done = PartCount(count=FusionCount(boxes_in=[0] * len(self.sources)))
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
        lead = self.sources[0]
        base = pq.read_table(lead.path(part), filesystem=lead.fs)
        fused: dict[str, list] = {c: [] for c in SOURCE_COLUMNS}
        for rows in paired_rows(self.sources, part, SOURCE_COLUMNS, base):
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
