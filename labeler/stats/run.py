"""`labeler stats`: the figures of the tasks of a job's output, as a table and as JSON.

    1. the job output and its task folders (labeler.export.rows.JobOutput: local or s3://,
       the same checks and errors as export and preview); all tasks, or the one --task names
    2. per task, one pass over its rows (TaskRows.batches), counted by compute.TaskStats
    3. the table (StatsSummary.lines) and, with --json, the same figures as a JSON file

Bad options or a bad job output raise SpecError (the CLI exits 2 with the message).
"""

from __future__ import annotations

from dataclasses import dataclass

from labeler.config import SpecError
from labeler.export.rows import JobOutput, TaskRows
from labeler.json_report import check_report_path, write_report
from labeler.stats.compute import TaskStats

DEFAULT_SCORES = (0.1, 0.3, 0.5, 0.7)
DEFAULT_TOP = 30
# Characters of a label shown in the table (region captions can be long); the JSON has all.
LABEL_CHARS = 40


class StatsError(SpecError):
    """Stats that cannot be computed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class StatsOptions:
    """What `labeler stats` was asked (docs/stats.md). output: the job output folder or s3://
    prefix; task: one task folder (None: all); scores: thresholds in [0, 1]; top: labels
    shown per task; json: a local file for the figures as JSON."""

    output: str
    task: str | None = None
    scores: tuple[float, ...] = DEFAULT_SCORES
    top: int = DEFAULT_TOP
    json: str | None = None


@dataclass
class StatsSummary:
    """figures: {"output", "finished", "scores", "top", "tasks": [{"name", "kind", "model":
    {model, model_family, model_revision}, **TaskStats.figures}]}; `lines()` is what the
    command prints."""

    figures: dict

    def lines(self) -> list[str]:
        out = [f"output: {self.figures['output']}"]
        if not self.figures["finished"]:
            out.append("warning: no _SUCCESS: the job did not finish, these are the figures of "
                       "its committed shards")
        for task in self.figures["tasks"]:
            out += _task_lines(task, self.figures["scores"], self.figures["top"])
        return out


def _task_lines(task: dict, scores: list[float], top: int) -> list[str]:
    model = task["model"]
    revision = f"@{model['model_revision']}" if model.get("model_revision") else ""
    out = [f"task: {task['name']} ({task['kind']}), model: {model.get('model_family')} "
           f"{model.get('model')}{revision}",
           f"  rows: {task['rows']}, error rows: {task['error_rows']}"]
    out += [f"    x{e['rows']}: {e['reason']}" for e in task["errors"]]
    good = task["rows"] - task["error_rows"]
    if "text" in task:
        text = task["text"]
        mean = "-" if text["mean_chars"] is None else f"{text['mean_chars']:.1f}"
        out.append(f"  text: {text['empty']} empty of {good} rows without error; length in "
                   f"characters: mean {mean}, max {text['max_chars']}")
        return out
    boxes = task["boxes"]
    pruned = " counted (more were seen)" if boxes["max_undercount"] else ""
    out.append(f"  rows with boxes: {boxes['rows_with_boxes']} of {good} rows without error; "
               f"boxes: {boxes['boxes']}; labels: {boxes['labels']}{pruned}")
    tracks = boxes.get("tracks")
    if tracks:
        out.append(f"  tracks: {tracks['tracks']} of {tracks['tracked_boxes']} boxes "
                   f"({tracks['boxes_per_track']:.1f} a track); "
                   f"{boxes['boxes'] - tracks['tracked_boxes']} boxes in no track")
    shown = [(" ".join(b["label"].split()) or " ", b) for b in boxes["per_label"]]
    shown = [(name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 3] + "...", b)
             for name, b in shown]
    if shown:
        width = max(len("label"), *(len(name) for name, _ in shown))
        keys = [f"{s:g}" for s in scores]
        track_head = f"{'tracks':>8} " if tracks else ""
        out.append(f"  {'label':<{width}} {'boxes':>8} {'images':>8} {track_head}"
                   + " ".join(f"{'>=' + k:>8}" for k in keys) + f" {'median':>7}")
        for name, b in shown:
            median = "-" if b["median_score"] is None else f"{b['median_score']:.3f}"
            track_cell = f"{b['tracks']:>8} " if tracks else ""
            out.append(f"  {name:<{width}} {b['boxes']:>8} {b['images']:>8} {track_cell}"
                       + " ".join(f"{b['at_score'][k]:>8}" for k in keys) + f" {median:>7}")
    if boxes["labels_not_shown"]:
        out.append(f"  ... {boxes['labels_not_shown']} more labels (--top {top})")
    if boxes["max_undercount"]:
        out.append(f"  too many labels to count exactly: each label's counts may be short by at "
                   f"most {boxes['max_undercount']} boxes")
    return out


def _check_options(options: StatsOptions) -> None:
    if not options.scores or any(not 0 <= s <= 1 for s in options.scores):
        raise StatsError(f"--scores {','.join(f'{s:g}' for s in options.scores)}: box scores "
                         f"in [0, 1], comma-separated, e.g. 0.1,0.3,0.5,0.7")
    if options.top < 0:
        raise StatsError(f"--top {options.top}: the number of labels shown per task, 0 or more")
    if options.json is not None:
        check_report_path(options.json, StatsError)


def run_stats(options: StatsOptions) -> StatsSummary:
    """The figures of the tasks of `options.output` (see the module docstring), written to
    `options.json` too when set; ExportError / StatsError (SpecErrors) when they cannot be
    computed as asked, StorageError when the job output cannot be read."""
    _check_options(options)
    job = JobOutput(options.output)
    folders = [job.named(options.task)] if options.task is not None else job.tasks
    tasks = []
    for folder in folders:
        stats = TaskStats(folder.kind, options.scores)
        for batch in TaskRows(job, folder).batches(stats.columns):
            stats.add(batch)
        tasks.append({"name": folder.name, "kind": folder.kind, "model": folder.model,
                      **stats.figures(options.top)})
    summary = StatsSummary({"output": job.uri, "finished": job.finished,
                            "scores": list(options.scores), "top": options.top,
                            "tasks": tasks})
    if options.json is not None:
        write_report(options.json, summary.figures, StatsError)
    return summary
