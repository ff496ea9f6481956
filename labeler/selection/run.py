"""`labeler select`: the rows of a job most worth a human's review, best first, as a file of
ids that `labeler preview --ids-file` draws and `labeler export --ids-file` exports (to a
Label Studio project, say). Auto-labels at scale are checked by sampling; this chooses the
sample where a check teaches most (active learning's selection).

    1. the options are checked, and the output files' paths, before anything is read
    2. by uncertainty: one task's rows, streamed in batches (labeler.export.rows.TaskRows,
       pseudo-label rows under the image threshold included); by disagreement: several
       tasks' rows paired per input as `labeler fuse` pairs them (refused as fuse refuses
       tasks that do not pair); each row scored (labeler.selection.scores), error rows
       skipped and counted
    3. a video's frames are one input: its best-scored frame is its score
    4. the `limit` best, in memory of `limit` entries whatever the rows (ties by id), printed,
       written to --ids-file one id a line, and with their scores and reasons to --json
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from labeler.config import SpecError
from labeler.export.rows import JobOutput, TaskFolder, TaskRows, Tally, not_parquet
from labeler.fusion.run import Source, paired_rows, paired_sources, task_sources, uris_of
from labeler.json_report import check_report_path, write_report
from labeler.selection.scores import Priority, disagreement, uncertainty
from labeler.storage import storage_error

# Selected rows printed; the rest are in --ids-file and --json.
SHOWN = 20
# By disagreement: boxes of two tasks are one object when they overlap by more (as fuse's iou).
DEFAULT_IOU = 0.55


class SelectError(SpecError):
    """A selection that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class SelectOptions:
    """What `labeler select` was asked. by: uncertainty (one task of the one output: `task`,
    default the only one with boxes) or disagreement (at least two tasks clustered at `iou`:
    `tasks` of one output, or one task of each output, as `labeler fuse` takes them); limit:
    rows selected; ids_file, json: local files written."""

    outputs: tuple[str, ...]
    by: Literal["uncertainty", "disagreement"] = "uncertainty"
    task: str | None = None
    tasks: tuple[str, ...] = ()
    limit: int = 100
    iou: float | None = None  # None: DEFAULT_IOU (by disagreement only)
    ids_file: str | None = None
    json: str | None = None

    @property
    def cluster_iou(self) -> float:
        return DEFAULT_IOU if self.iou is None else self.iou


@dataclass(frozen=True)
class Selected:
    id: str
    score: float
    reason: str


@dataclass
class SelectSummary:
    options: SelectOptions
    tasks: list[str]
    finished: bool
    rows: int = 0
    error_rows: int = 0
    inputs: int = 0  # distinct ids scored (a video's frames are one)
    selected: list[Selected] = field(default_factory=list)

    def lines(self) -> list[str]:
        o = self.options
        out = [f"by {o.by} over {', '.join(self.tasks)}: {self.rows} rows, {self.inputs} "
               f"inputs scored, {self.error_rows} error rows skipped"]
        if not self.finished:
            out.append(f"warning: {', '.join(o.outputs)}: no _SUCCESS, a job did not "
                       f"finish; its committed shards were read")
        out.append(f"selected: {len(self.selected)} (--limit {o.limit})")
        out += [f"  {s.score:.3f}  {s.id}  {s.reason}" for s in self.selected[:SHOWN]]
        if len(self.selected) > SHOWN:
            out.append(f"  ... {len(self.selected) - SHOWN} more"
                       + (f" in {o.ids_file}" if o.ids_file else ""))
        if o.ids_file:
            out.append(f"ids: {o.ids_file} (labeler preview --ids-file, labeler export "
                       f"--ids-file)")
        return out

    def report(self) -> dict:
        o = self.options
        return {"outputs": list(o.outputs), "by": o.by, "tasks": self.tasks,
                **({"iou": o.cluster_iou} if o.by == "disagreement" else {}),
                "rows": self.rows, "error_rows": self.error_rows, "inputs": self.inputs,
                "limit": o.limit, "selected": [vars(s) for s in self.selected]}


def run_select(options: SelectOptions) -> SelectSummary:
    """The selection (module docstring); SelectError for bad options, SpecError for tasks
    that cannot be read as asked, StorageError when the output cannot be read."""
    _check_options(options)
    jobs = [JobOutput(output) for output in options.outputs]
    finished = all(job.finished for job in jobs)
    if options.by == "uncertainty":
        folder = jobs[0].pick(options.task)
        summary = SelectSummary(options, [folder.name], finished)
        scored = _by_uncertainty(jobs[0], folder, summary)
    else:
        sources = task_sources(jobs, list(options.tasks))
        try:
            parts, _ = paired_sources(sources)
        except pa.ArrowInvalid as err:
            raise not_parquet(uris_of(sources), err) from None
        summary = SelectSummary(options, [source.name for source in sources], finished)
        scored = _by_disagreement(sources, parts, options.cluster_iou, summary)
    best = heapq.nsmallest(options.limit, _per_input(scored, summary),
                           key=lambda s: (-s.score, s.id))
    summary.selected = best
    if options.ids_file is not None:
        try:
            with open(options.ids_file, "w", encoding="utf-8") as f:
                f.writelines(f"{s.id}\n" for s in best)
        except OSError as err:
            raise SelectError(f"cannot write --ids-file {options.ids_file!r}: {err}") from None
    if options.json is not None:
        write_report(options.json, summary.report(), SelectError)
    return summary


def _check_options(options: SelectOptions) -> None:
    if options.limit < 1:
        raise SelectError(f"--limit {options.limit}: the number of rows to select, at least 1")
    if options.by == "uncertainty" and (options.tasks or len(options.outputs) > 1):
        raise SelectError("--tasks and several job outputs give the tasks compared by --by "
                          "disagreement; by uncertainty, name one output and one --task")
    if options.by == "uncertainty" and options.iou is not None:
        raise SelectError("--iou is where --by disagreement clusters the tasks' boxes; by "
                          "uncertainty, one task's scores alone rank the rows")
    if options.by == "disagreement":
        if options.task is not None:
            raise SelectError("--task picks the one task of --by uncertainty; by "
                              "disagreement, name the tasks with --tasks")
        if not 0 < options.cluster_iou < 1:
            raise SelectError(f"--iou {options.cluster_iou:g}: an overlap in (0, 1)")
    for flag, path in (("--ids-file", options.ids_file), ("--json", options.json)):
        if path is not None:
            check_report_path(path, SelectError, flag)


def _by_uncertainty(job: JobOutput, folder: TaskFolder,
                    summary: SelectSummary) -> Iterator[Selected]:
    tally = Tally()
    try:
        for row in TaskRows(job, folder, include_not_kept=True).scan(tally):
            priority = uncertainty([(box.label, box.score) for box in row.boxes])
            yield _selected(row.id, row.frame_index, priority)
    finally:
        summary.rows, summary.error_rows = tally.rows, tally.errors.total


def _by_disagreement(sources: list[Source], parts: list[str], iou: float,
                     summary: SelectSummary) -> Iterator[Selected]:
    names = [source.name for source in sources]
    for part in parts:
        try:
            inputs = list(paired_rows(sources, part, ("detections", "error")))
        except OSError as err:
            raise storage_error(uris_of(sources), "read the job output", err) from None
        except pa.ArrowInvalid as err:
            raise not_parquet(uris_of(sources), err) from None
        for rows in inputs:
            summary.rows += 1
            if any(row["error"] for row in rows):
                summary.error_rows += 1
                continue
            first = rows[0]
            priority = disagreement([row["detections"] or [] for row in rows],
                                    first["width"], first["height"], names, iou)
            yield _selected(first["id"], first.get("frame_index"), priority)


def _selected(row_id: str, frame_index: int | None, priority: Priority) -> Selected:
    reason = priority.reason if frame_index is None else f"frame {frame_index}: {priority.reason}"
    return Selected(row_id, priority.score, reason)


def _per_input(scored: Iterable[Selected], summary: SelectSummary) -> Iterator[Selected]:
    """One entry per input: a run of rows with one id (a video's frames, together in a job
    output) gives its best-scored row."""
    current: Selected | None = None
    for entry in scored:
        if current is not None and entry.id != current.id:
            summary.inputs += 1
            yield current
            current = None
        if current is None or entry.score > current.score:
            current = entry
    if current is not None:
        summary.inputs += 1
        yield current
