"""A labeling job, either media: plan inputs -> decode (CPU tasks) -> model actors -> Parquet.

    from_items(rows)                       {id, uri, shard}, one per pending input
      .map_batches(<decode stage>)         CPU tasks: read + decode, error rows for bad input;
                                           images: labeler.jobs.images, videos: jobs.video
      .map_batches(Predictor, ...)         actor pool per task: num_gpus, batch size, pool size
      .iter_batches() on the driver        ShardedParquetSink commits one file per shard

Images and videos differ only in how inputs are listed and in the decode stage: an image is
one row, a video as many rows as it has sampled frames or clips (numbered parts, see
labeler.sinks.parquet). The model stages, the sink, the progress bar and the summary are
the same.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from labeler.config import JobSpec, SpecError, TaskSpec
from labeler.jobs.examples import EXAMPLES_COLUMN, examples_text
from labeler.jobs.identity import (content_digests, fingerprint, input_identities,
                                   job_identity, legacy_fingerprint)
from labeler.pseudo.report import COLUMNS as REPORT_COLUMNS
from labeler.pseudo.report import pseudo_label_report, report_lines, write_report
from labeler.sinks.parquet import MissingParts, ShardedParquetSink
from labeler.sources import no_inputs_hint, plan_source
from labeler.sources.files import names_one_file
from labeler.storage import (check_model_sources, comparable_path, is_s3, path_within,
                             worker_env)

log = logging.getLogger(__name__)

MIN_BATCHES_FOR_RATE = 5
# Tries of one batch on a model actor whose process dies (out of memory, a segfault in native
# code): Ray restarts the actor and retries the batch; after the last try the batch is
# dropped and its inputs become error rows (lost_input_rows), so one poisonous input cannot
# stall the job forever (Ray Data's default is to retry without end).
MODEL_BATCH_ATTEMPTS = 3
# A job labels the inputs of such dropped batches again, one input per actor task, so that
# only the input that kills the worker becomes an error row; a video job, the lost frame rows
# of each video (decoded again, only those kept). Each death there costs a model reload, so
# this runs only when few inputs or frames were lost (up to 4 decode blocks; a video's lost
# last rows count as one, their number being unknown): many more point at a cause common
# to all batches (too little memory for the batch size), which this would only repeat input
# by input.
ISOLATE_AT_MOST = 64


@dataclass
class JobSummary:
    """What a finished job reports; also written to <output>/_SUCCESS.

    inputs: images or videos; rows: output rows (one per image, sampled frame or clip, and
    task); unit: what a row labels, "images", "frames" or "clips"; rates are of those
    labeled by every task (rows / task_count per second)."""

    output: str
    inputs: int
    media: str = "image"
    unit: str = "images"
    rows: int = 0
    errors: int = 0
    skipped_inputs: int = 0  # already committed by an earlier run of the same job
    listed_inputs: int | None = None  # listed before input.subset chose `inputs` of them
    subset: str | None = None  # input.subset, described ("count 500, seed 0")
    retried_inputs: int = 0  # had error rows in an earlier run, labeled again (retry_errors)
    ray_start_s: float = 0.0
    first_result_s: float = 0.0  # after Ray start: model load + the first batch
    wall_s: float = 0.0
    steady_images_per_s: float = 0.0  # rows after the first batch / time after it (`unit`/s)
    min_change: float | None = None  # the video sampling's, when set
    unchanged_frames: int = 0  # sampled frames min_change skipped (no row)
    error_reasons: dict[str, int] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)  # per pseudo-label task
    tracks: dict[str, int] = field(default_factory=dict)  # tracked task -> tracks linked
    shards: int = 0  # output files per task
    committed_shards: int = 0  # committed by every task before this run (resume skips them)
    reopened_shards: int = 0  # of those, reopened by retry_errors for their error rows
    tasks: list[str] = field(default_factory=list)  # one line per task: model and resources
    # A dry run (run_job(dry_run=True)) plans and stops: the fields above describe the plan.
    dry_run: bool = False
    overwritten_files: int = 0  # files --overwrite would delete

    @property
    def task_count(self) -> int:
        return max(1, len(self.tasks))

    def lines(self) -> list[str]:
        if self.dry_run:
            return self.plan_lines()
        after_start = max(self.wall_s - self.ray_start_s, 1e-9)
        steady = (f"{self.steady_images_per_s:.1f} {self.unit}/s steady"
                  if self.steady_images_per_s
                  else f"{self.rows / self.task_count / after_start:.1f} {self.unit}/s with "
                       f"model load (too few batches for a steady rate)")
        inputs = "videos" if self.media == "video" else "inputs"
        retried = f", {self.retried_inputs} retried" if self.retried_inputs else ""
        return [
            f"rows: {self.rows} ({self.inputs} {inputs}{self._of_listed()}, "
            f"{self.skipped_inputs} already done{retried}), errors: {self.errors}",
            *([f"skipped {self.unchanged_frames} sampled frames that changed less than "
               f"min_change {self.min_change:g} (no row)"] if self.min_change is not None
              else []),
            *([f"throughput: {steady} (ray start {self.ray_start_s:.1f}s, model load + first "
               f"batch {self.first_result_s:.1f}s, wall {self.wall_s:.1f}s)"]
              if self.rows else []),  # nothing was left to label: no rate to give
            *self._whole_input_estimate(),
            *self._error_lines(),
            *(f"tracks: {n} in task {task}'s videos labeled in this run"
              for task, n in self.tracks.items()),
            *(line for report in self.reports.values() for line in report_lines(report)),
            f"output: {self.output}",
        ]

    def _error_lines(self, shown: int = 10) -> list[str]:
        """The `shown` most frequent error reasons, most frequent first, and one line for
        the rest: an error storm (thousands of truncated files, each reason naming its own
        byte count) must neither hide its commonest reason nor print thousands of lines."""
        ranked = sorted(self.error_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        lines = [f"  error x{n}: {reason}" for reason, n in ranked[:shown]]
        rest = ranked[shown:]
        if rest:
            lines.append(f"  ... and {sum(n for _, n in rest)} errors of {len(rest)} other "
                         f"reasons (every reason: error_reasons in {self.output}/_SUCCESS)")
        return lines

    def _whole_input_estimate(self) -> list[str]:
        """After a subset run with a steady rate: how long every listed input would take at
        it, on the same resources ([] otherwise). A video's rows per video are this run's."""
        labeled = self.inputs - self.skipped_inputs
        if self.listed_inputs is None or not self.steady_images_per_s or not labeled:
            return []
        seconds = (self.listed_inputs * (self.rows / self.task_count / labeled)
                   / self.steady_images_per_s)
        inputs = "videos" if self.media == "video" else "inputs"
        return [f"all {self.listed_inputs} listed {inputs} at this rate: about "
                f"{_duration(seconds)} (the same resources; add the model load)"]

    def _of_listed(self) -> str:
        """' of N listed (subset ...)' when input.subset chose the inputs, else ''."""
        if self.listed_inputs is None:
            return ""
        return f" of {self.listed_inputs} listed (subset {self.subset})"

    def plan_lines(self) -> list[str]:
        """What a dry run prints: the inputs, what is left to label, the tasks, the output."""
        inputs = "videos" if self.media == "video" else "inputs"
        to_label = self.inputs - self.skipped_inputs
        retried = (f"; {self.retried_inputs} with error rows, labeled again"
                   if self.retried_inputs else "")
        if self.overwritten_files:
            state = f"--overwrite would delete its {self.overwritten_files} files"
        elif self.committed_shards:
            state = (f"resuming: {self.committed_shards} of {self.shards} "
                     f"shard{'' if self.shards == 1 else 's'} committed")
            if self.reopened_shards:
                state += f", {self.reopened_shards} reopened for their error rows"
        else:
            state = "nothing committed yet"
        return [
            "dry run: nothing was labeled or written",
            f"inputs: {self.inputs} {inputs}{self._of_listed()} in {self.shards} "
            f"shard{'' if self.shards == 1 else 's'}",
            f"to label: {to_label} {inputs} ({self.skipped_inputs} already done{retried})",
            *(f"task {line}" for line in self.tasks),
            f"output: {self.output} ({state})",
        ]


def _duration(seconds: float) -> str:
    """A duration for a person: '40 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _task_line(task: TaskSpec) -> str:
    """A task's name, model and resources, as a dry run prints them, and its tracking."""
    res = task.resources
    track = "" if task.track is None else f"; {task.track.summary_text()}"
    compiled = " (compiled)" if task.model.compile else ""
    at_once = f" ({task.batches_at_once} at once)" if task.batches_at_once > 1 else ""
    return (f"{task.output_name}: {task.task} with {task.model.family} {task.model.source}"
            f"{compiled}, batch {res.batch_size}{at_once}, {_actors(res)} actor(s) x "
            f"{res.num_cpus:g} CPU {res.num_gpus:g} GPU{track}")


def _actors(res) -> str:
    """'2', or '1-8' for a pool that grows."""
    if res.min_actors == res.max_actors:
        return str(res.min_actors)
    return f"{res.min_actors}-{res.max_actors}"


def _model_stages(ds, tasks: list[TaskSpec], one_task_per_actor: bool = False):
    """One actor pool per task over the decoded rows. A one-task job's actors emit record
    tables; with several tasks each pool passes the rows on with its records as JSON, and a
    last CPU stage turns them into one row per input and task. Image columns are dropped
    by the last pool that reads them, so later stages move only records.
    one_task_per_actor: an actor holds one batch at a time (see _actor_pool)."""
    from labeler.actors.predictor import Predictor, explode_records
    from labeler.jobs.stages import input_column

    columns = [input_column(t) for t in tasks]
    for k, task in enumerate(tasks):
        res = task.resources
        later = set(columns[k + 1:])
        drop = tuple(c for c in set(columns[: k + 1]) if c not in later)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates free-form remote args but has no named parameter for
            # max_task_retries yet; pyproject keeps Ray below 2.64, which removes them.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                Predictor,
                fn_constructor_kwargs={"task": task, "input_column": columns[k],
                                       "passthrough": len(tasks) > 1, "drop_columns": drop},
                batch_size=res.batch_size, compute=_actor_pool(res, task.batches_at_once,
                                                                one_task_per_actor),
                num_gpus=res.num_gpus, num_cpus=res.num_cpus, batch_format="numpy",
                max_restarts=-1, max_task_retries=MODEL_BATCH_ATTEMPTS - 1, **worker_env())
    if len(tasks) > 1:
        ds = ds.map_batches(explode_records, fn_kwargs={"task_names": [t.output_name for t in tasks]},
                            batch_format="numpy", num_cpus=0.5)
    return ds


def _actor_pool(res, batches_at_once: int = 1, one_task_per_actor: bool = False):
    """A fixed pool of `concurrency` actors, or one that Ray Data sizes between [min, max]
    (it adds actors while batches wait and the cluster has room, removes idle ones).

    one_task_per_actor: Ray Data sends each actor its next batches while it works on one;
    when the actor dies, those queued batches fail with it, and each failure spends one of
    their MODEL_BATCH_ATTEMPTS. Relabeling lost rows one per batch must not let the row that
    kills the worker take its queued neighbours down too, so there an actor holds one.

    batches_at_once > 1 (TaskSpec.batches_at_once): the actor runs that many batches at once
    in threads (Ray Data's true multi-threading); Adapter.device_turn keeps their model time
    apart."""
    import ray

    if one_task_per_actor:
        queued = {"max_tasks_in_flight_per_actor": 1}
    elif batches_at_once > 1:
        queued = {"max_concurrent_calls_per_actor": batches_at_once,
                  "enable_true_multi_threading": True}
    else:
        queued = {}
    if res.min_actors == res.max_actors:
        return ray.data.ActorPoolStrategy(size=res.min_actors, **queued)
    return ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors, **queued)


def check_local_capacity(spec: JobSpec, cpus: float) -> None:
    """A local Ray cannot grow: if the actors' CPUs leave none for decoding, the job would
    wait forever. Fail at once instead, saying what to change. A pool that may grow counts
    at its largest."""
    needed = sum(t.resources.num_cpus * t.resources.max_actors for t in spec.tasks)
    if needed + 1 > cpus:
        raise SpecError(
            f"tasks.*.resources: the model actors reserve {needed:g} CPUs and decoding needs 1, "
            f"but this Ray has {cpus:g}; lower num_cpus or concurrency (fractions such as 0.5 "
            f"share a core)")


def check_local_gpus(spec: JobSpec, gpus: float) -> None:
    """A local Ray cannot add GPUs either: an actor asking for more than the machine has
    waits forever for a node that never comes. Fail at once, naming the task. A pool that
    may grow counts at its smallest (it grows only as far as the GPUs go)."""
    for k, task in enumerate(spec.tasks):
        res = task.resources
        if res.num_gpus and (res.num_gpus > gpus or res.num_gpus * res.min_actors > gpus):
            have = f"{gpus:g}" if gpus else "0 (no CUDA device is visible)"
            raise SpecError(
                f"tasks.{k}.resources.num_gpus: {res.min_actors} model actor(s) of "
                f"{res.num_gpus:g} GPU each, but this machine's Ray has {have}; lower "
                f"num_gpus or concurrency, set num_gpus: 0 to run on the CPU, or join a "
                f"cluster with GPUs (ray.address)")
    needed = sum(t.resources.num_gpus * t.resources.min_actors for t in spec.tasks)
    if needed > gpus:
        raise SpecError(f"tasks.*.resources.num_gpus: the tasks' model actors need {needed:g} "
                        f"GPUs together, but this machine's Ray has {gpus:g}; lower "
                        f"num_gpus (fractions share a GPU) or concurrency")


def check_input_apart_from_output(input_path: str, output_path: str) -> None:
    """SpecError when the output is the input, holds it, or lies inside the folder it lists:
    --overwrite would delete the inputs, and a later run would list the output's files
    (manifests, a recursive glob's matches) as inputs."""
    if is_s3(input_path) != is_s3(output_path):
        return
    listed, output = _comparable(input_path), comparable_path(output_path)
    is_file = names_one_file(input_path)
    if path_within(listed, output):
        raise SpecError(f"output.path: {output_path!r} holds the input {input_path!r}; "
                        f"--overwrite would delete it: write the output elsewhere")
    if not is_file and path_within(output, listed):
        raise SpecError(f"output.path: {output_path!r} lies inside the input {input_path!r}; "
                        f"a later run would list its files as inputs: write the output "
                        f"outside it")


def _comparable(path: str) -> str:
    """An input path as compared (labeler.storage.comparable_path), a local glob cut to the
    folder before its first wildcard."""
    if not is_s3(path) and glob.has_magic(path):
        path = os.path.dirname(re.split(r"[*?\[]", path, maxsplit=1)[0] + "x")
    return comparable_path(path)


def _local_gpus(spec: JobSpec) -> float:
    """GPUs of the local Ray this job runs on: Ray's count once started, else the CUDA
    devices this process sees (as Ray counts them: CUDA_VISIBLE_DEVICES applies)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0)
    import torch

    return torch.cuda.device_count()


def _local_cpus(spec: JobSpec) -> float:
    """CPUs of the local Ray this job runs on (already started, or about to be)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("CPU", 0)
    return spec.ray.num_cpus or os.cpu_count() or 1


def init_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=spec.ray.address, num_cpus=spec.ray.num_cpus,
             logging_level=logging.WARNING, configure_logging=True, log_to_driver=True)


def run_job(spec: JobSpec, progress: bool = True, dry_run: bool = False) -> JobSummary:
    """Run a validated job (images or videos, input.media) to completion; returns its summary.

    Everything that can fail without labeling anything is checked first, in order: the
    input listing (StorageError naming the URI and cause; SpecError if it holds no input or
    lacks a pseudo-label task's caption column), the local capacity, then the output
    (StorageError, OutputConflict), before Ray starts. dry_run: those checks and the plan
    (what is left to label, `summary.dry_run`), then return: no Ray, nothing written."""
    started = time.perf_counter()
    media = spec.input.media
    check_input_apart_from_output(spec.input.path, spec.output.path)
    if not is_s3(spec.output.path) and os.path.isfile(spec.output.path):
        raise SpecError(f"output.path: {spec.output.path!r} is a file; give a folder (made if "
                        f"missing) or an s3:// prefix")
    plan = plan_source(spec.input.path, spec.input.effective_files_per_shard, media,
                       subset=spec.input.subset)
    items = plan.items
    if not items:
        raise SpecError(f"input.path: no {media} files found under {spec.input.path!r}"
                        f"{no_inputs_hint(spec.input.path, media)}"
                        if not plan.listed else
                        f"input.subset: chose none of the {plan.listed} inputs under "
                        f"{spec.input.path!r}; give a larger count or fraction")
    expected: dict[int, int] = {}
    for item in items:
        expected[item.shard] = expected.get(item.shard, 0) + 1
    task_names = [t.output_name for t in spec.tasks]
    caption_columns = _caption_columns(spec, plan)
    with_examples = _example_inputs(spec, items)
    if spec.ray.address is None:
        check_local_capacity(spec, _local_cpus(spec))
        if any(t.resources.num_gpus for t in spec.tasks):
            check_local_gpus(spec, _local_gpus(spec))
    check_model_sources(spec.tasks, "tasks")
    metadata = plan.metadata
    if metadata is not None:
        metadata = metadata.append_column("shard", pa.array([i.shard for i in items], pa.int64()))
    inputs = input_identities(items)
    identity = job_identity(spec, inputs, content_digests(spec, items))
    tracks: dict[str, int] = {}  # task -> tracks linked in this run (filled at commits)
    sink = ShardedParquetSink(spec.output.path, expected, task_names, fingerprint(identity),
                              spec.output.overwrite, metadata=metadata,
                              retry_errors=spec.output.retry_errors, dry_run=dry_run,
                              identity=identity,
                              legacy_fingerprint=lambda: legacy_fingerprint(spec, inputs),
                              finalize=_finalizers(spec, tracks))
    pending = sink.pending_shards()
    retrying = sink.retrying  # reopened shards: only their failed inputs run again
    pending_items = [i for i in items if i.shard in pending
                     and (i.shard not in retrying or i.id in retrying[i.shard])]
    with_prompt = plan.has_prompts  # a scan of every input: once, not once per row
    todo = [i.row(with_prompt) for i in pending_items]
    for row, item in zip(todo, pending_items):
        for column, source in caption_columns.items():
            caption = item.metadata.get(source)
            row[column] = "" if caption is None else str(caption)
        if with_examples:
            row[EXAMPLES_COLUMN] = examples_text(item.metadata.get(EXAMPLES_COLUMN))
    summary = JobSummary(output=sink.uri, inputs=len(items), media=media, unit=_unit(spec),
                         listed_inputs=plan.listed,
                         subset=spec.input.subset.describe() if spec.input.subset else None,
                         skipped_inputs=len(items) - len(todo),
                         retried_inputs=sum(len(ids) for ids in retrying.values()),
                         min_change=(spec.input.sampling.min_change
                                     if spec.input.media == "video" else None),
                         tracks=tracks)
    summary.shards = len(expected)
    # Shards reopened for their error rows (retry_errors) are pending and committed.
    summary.committed_shards = len(expected) - len(pending) + len(retrying)
    summary.reopened_shards = len(retrying)
    summary.tasks = [_task_line(t) for t in spec.tasks]
    if dry_run:
        summary.dry_run, summary.overwritten_files = True, sink.overwritten_files
        return summary
    if todo:
        _execute(spec, todo, sink, summary, progress)
    summary.reports = _pseudo_label_reports(spec, sink)
    summary.wall_s = time.perf_counter() - started
    sink.finish(asdict(summary))
    return summary


def _finalizers(spec: JobSpec,
                tracks: dict[str, int]) -> dict[str, Callable[[pa.Table], pa.Table]]:
    """What the sink does to a task's shard before writing it: link each video's boxes into
    tracks, for tasks with `track`, counting them in `tracks` (task name -> tracks)."""
    from labeler.tracking import add_track_ids, count_tracks

    def link(rows: pa.Table, task: TaskSpec) -> pa.Table:
        linked = add_track_ids(rows, task.track)
        tracks[task.output_name] = tracks.get(task.output_name, 0) + count_tracks(linked)
        return linked

    return {t.output_name: functools.partial(link, task=t)
            for t in spec.tasks if t.track is not None}


def _pseudo_label_reports(spec: JobSpec, sink: ShardedParquetSink) -> dict[str, dict]:
    """The OWL-ST report of each pseudo-label task, over all its rows (this run's and any
    earlier run's), written beside them as <output>/<task>/_report.json."""
    import pyarrow.dataset as pads

    reports = {}
    for task in spec.tasks:
        if task.task != "pseudo-label":
            continue
        folder = f"{sink.path}/{task.output_name}"
        batches = pads.dataset(folder, filesystem=sink.fs, format="parquet").to_batches(
            columns=list(REPORT_COLUMNS))
        reports[task.output_name] = report = pseudo_label_report(batches)
        base = sink.uri.rstrip("/")
        write_report(f"{base}/{task.output_name}/_report.json", report)
    return reports


def missing_inputs(spec: JobSpec, todo: list[dict],
                   sink: ShardedParquetSink) -> dict[tuple[str, str], tuple[int, int]]:
    """{(task output name, input id): (shard, next part)} for each input of `todo` whose rows
    did not all arrive (Ray Data dropped its batch after MODEL_BATCH_ATTEMPTS tries); next
    part: one past the highest part_index that arrived, 0 when no row did."""
    by_shard: dict[int, list[str]] = {}
    for row in todo:
        by_shard.setdefault(row["shard"], []).append(row["id"])
    missing = {}
    for task in spec.tasks:
        for shard in sorted(sink.pending_shards()):
            for id_, next_part in sink.incomplete_inputs(task.output_name, shard,
                                                         by_shard.get(shard, [])).items():
                missing[(task.output_name, id_)] = (shard, next_part)
    return missing


def lost_video_parts(spec: JobSpec, missing: dict[tuple[str, str], tuple[int, int]],
                     sink: ShardedParquetSink) -> dict[str, MissingParts]:
    """{video id: its missing rows} for the videos of `missing` that miss the same rows in
    every task: the model stages run one after another on each row, so a batch lost in any
    of them is lost in all, and labeling those rows again gives no task a row twice."""
    found = {}
    for id_ in {id_ for _, id_ in missing}:
        each = {sink.missing_parts(task.output_name, id_) for task in spec.tasks}
        if len(each) == 1:
            found[id_] = each.pop()
    return found


def lost_input_rows(spec: JobSpec, todo: list[dict], sink: ShardedParquetSink,
                    alone: bool = False) -> pa.Table:
    """One error row per (task, input) whose rows did not all arrive, as OUTPUT_SCHEMA rows;
    empty when none. alone: the input (a video: each of its lost frames) was retried in a
    batch of its own (its reason says it is the input that kills the worker)."""
    from labeler.actors.predictor import OUTPUT_SCHEMA
    from labeler.registry import load_adapter_class

    uris = {row["id"]: row["uri"] for row in todo}
    if not alone:
        where = "on the batch holding this input"
    elif spec.input.media == "video":
        where = "on frames of this video, each alone"
    else:
        where = "on this input alone"
    # Ray Data drops a block whose decode task failed the same way (a worker that died,
    # a runtime environment that could not be set up): the sink cannot tell which stage
    # lost it, so the reason names both.
    reason = (f"not labeled: the model worker died {MODEL_BATCH_ATTEMPTS} times {where} "
              f"(out of memory, or a crash in native code; or the task decoding it failed)")
    missing = missing_inputs(spec, todo, sink)
    records = []
    for task in spec.tasks:
        parameters = None
        for (name, id_), (shard, next_part) in missing.items():
            if name == task.output_name:
                if parameters is None:
                    parameters = load_adapter_class(task.task, task.model.family)(
                        task).parameters_json()
                records.append({
                    "id": id_, "uri": uris[id_], "task": task.task,
                    "task_name": task.output_name, "model": task.model.source,
                    "model_family": task.model.family, "model_revision": task.model.revision,
                    "parameters": parameters, "error": reason, "shard": shard,
                    "part_index": next_part, "last_part": True})
    return pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA)


def _unit(spec: JobSpec) -> str:
    """What one output row labels."""
    if spec.input.media == "image":
        return "images"
    return "clips" if spec.input.clip is not None else "frames"


def _decoded(spec: JobSpec, todo: list[dict], rows_per_block: int | None = None):
    """The Ray dataset of decoded rows: the media's decode stage over the pending inputs.
    rows_per_block: images per decode task (None: the stage's default)."""
    if spec.input.media == "video":
        from labeler.jobs.video import decoded_videos

        return decoded_videos(spec, todo)
    from labeler.jobs.images import DECODE_BATCH, decoded_images

    return decoded_images(spec, todo, rows_per_block or DECODE_BATCH)


def caption_column(task: TaskSpec) -> str:
    """The pipeline column holding a pseudo-label task's captions ("" = none)."""
    return f"caption__{task.output_name}"


def _caption_columns(spec: JobSpec, plan) -> dict[str, str]:
    """{pipeline column: input column} for pseudo-label tasks that read captions from the
    input. An input column that no input has is a spec error: every image would get no
    queries, which is a typo far more often than an intent."""
    columns = {}
    present = None  # the inputs' fields: a scan of every input, done when needed
    for k, task in enumerate(spec.tasks):
        options = task.pseudo_label
        if task.task != "pseudo-label" or not options.use_captions or options.caption_from:
            continue
        present = plan.fields if present is None else present
        if options.caption_column not in present:
            raise SpecError(
                f"tasks.{k}.pseudo_label.caption_column: no input has a column "
                f"{options.caption_column!r} (input columns: {sorted(present) or 'none'}; "
                f"a folder gives `caption` from a .txt file beside each image, same stem); "
                f"set use_captions: false to label with the vocabulary alone")
        columns[caption_column(task)] = options.caption_column
    return columns


def _example_inputs(spec: JobSpec, items: list) -> bool:
    """Whether the rows carry their inputs' `examples` (labeler.jobs.examples), which a
    detect-by-example task reads. SpecError for such a task that has no query of its own
    (query_image, examples) while some input brings no examples, or that is tiled while
    some do (examples are drawn on the whole image)."""
    tasks = [(k, t) for k, t in enumerate(spec.tasks) if t.task == "detect-by-example"]
    if not tasks:
        return False
    brings = [bool(examples_text(i.metadata.get(EXAMPLES_COLUMN))) for i in items]
    for k, task in tasks:
        if task.tiles is not None and any(brings):
            raise SpecError(f"tasks.{k}.tiles: inputs bring examples, boxes drawn on the "
                            f"whole image, which a tiled task cannot take")
        if not task.query_image and not task.examples and not all(brings):
            first = items[brings.index(False)].id
            raise SpecError(
                f"tasks.{k}: detect-by-example needs a query: query_image (a path or s3:// URI "
                f"of an image showing the object), examples (boxes drawn on images), or an "
                f"`examples` field on every input (a manifest column); {brings.count(False)} "
                f"inputs have none (first: {first!r})")
    return any(brings)


def _execute(spec: JobSpec, todo: list[dict], sink: ShardedParquetSink, summary: JobSummary,
             progress: bool) -> None:
    import ray
    from tqdm import tqdm

    first_task = spec.tasks[0].output_name  # whose rows count a video's skipped frames
    t0 = time.perf_counter()
    init_ray(spec)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts rows written, which is what users watch
    ctx.execution_options.preserve_order = False
    # A batch that failed all its tries is dropped rather than failing the job: its inputs
    # become error rows at the end (lost_input_rows), so nothing is silently missing.
    ctx.max_errored_blocks = -1
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Data warns that its bars are off, suggesting to turn them on: ours is on instead.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    summary.ray_start_s = time.perf_counter() - t0

    # An image is one row per task; a video's row count is known only once it is decoded,
    # so its bar counts rows and shows their rate, without a total. The bar shows before the
    # dataset is built: that stores a block per 16 inputs, 78 s for a million.
    total = len(todo) * len(spec.tasks) if spec.input.media == "image" else None
    bar = tqdm(total=total, unit=summary.unit.removesuffix("s"), disable=not progress,
               desc="labeling")
    ds = _model_stages(_decoded(spec, todo), list(spec.tasks))
    t_start = time.perf_counter()
    t_first = None
    rows_at_first = 0
    batches = 0
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        sink.add(table)
        _count(summary, table, first_task)
        if t_first is None:
            t_first, rows_at_first = time.perf_counter(), summary.rows
            summary.first_result_s = t_first - t_start
        bar.update(table.num_rows)
        batches += 1
    steady_s = time.perf_counter() - (t_first or t_start)
    steady_rows = summary.rows - rows_at_first
    # A rate over a handful of result batches measures Ray's output buffering, not the
    # pipeline: report it only when enough batches arrived after the first one.
    if batches > MIN_BATCHES_FOR_RATE and steady_s > 0:
        summary.steady_images_per_s = steady_rows / len(spec.tasks) / steady_s

    again = _labeling_lost_again(spec, todo, sink)
    if again is not None:
        for table in again.iter_batches(batch_format="pyarrow", batch_size=None):
            sink.add(table)
            _count(summary, table, first_task)
            bar.update(table.num_rows)
    bar.close()
    lost = lost_input_rows(spec, todo, sink, alone=again is not None)
    if lost.num_rows:
        # A row per task (and per frame): the inputs are the distinct ids.
        log.warning("%d inputs were lost with model actors that died %d times on them; they "
                    "are error rows (labeler run --retry-errors labels them again)",
                    len(pc.unique(lost.column("id"))), MODEL_BATCH_ATTEMPTS)
        sink.add_lost(lost)
        _count(summary, lost, first_task)


def _labeling_lost_again(spec: JobSpec, todo: list[dict], sink: ShardedParquetSink):
    """The pipeline that labels what the first pass lost again, one row per model batch, or
    None when nothing was lost, or too much (ISOLATE_AT_MOST). Images: the inputs with no row
    in any task (a task's rows of an input reach the driver together with every other
    task's), so relabeling them cannot give any task a row twice. Videos: the lost rows of
    each video (lost_video_parts)."""
    missing = missing_inputs(spec, todo, sink)
    alone = [t.model_copy(update={"resources": t.resources.model_copy(
        update={"batch_size": 1})}) for t in spec.tasks]
    if spec.input.media == "image":
        ids = {id_ for _, id_ in missing
               if all(missing.get((t.output_name, id_), (0, 1))[1] == 0 for t in spec.tasks)}
        if not 0 < len(ids) <= ISOLATE_AT_MOST:
            return None
        log.warning("%d inputs were lost with model actors that died %d times on their batch; "
                    "labeling them again one per batch to find the input that kills the worker",
                    len(ids), MODEL_BATCH_ATTEMPTS)
        retry = [row for row in todo if row["id"] in ids]
        return _model_stages(_decoded(spec, retry, rows_per_block=1), alone,
                             one_task_per_actor=True)
    from labeler.jobs.video import decoded_videos

    parts = lost_video_parts(spec, missing, sink)
    if not 0 < sum(p.known_count for p in parts.values()) <= ISOLATE_AT_MOST:
        return None
    log.warning("%d videos lost frame rows with model actors that died %d times on their "
                "batch; labeling those rows again one per batch to find the frame that kills "
                "the worker", len(parts), MODEL_BATCH_ATTEMPTS)
    retry = [row for row in todo if row["id"] in parts]
    return _model_stages(decoded_videos(spec, retry, only_parts=parts), alone,
                         one_task_per_actor=True)


def _count(summary: JobSummary, table: pa.Table, first_task: str) -> None:
    """Add a table of output rows to the summary's row and error counts, and the frames
    min_change skipped (carried by each video's last row, once per task: the first task's
    are counted)."""
    summary.rows += table.num_rows
    first = pc.equal(table.column("task_name"), first_task)
    skipped = pc.sum(pc.if_else(first, table.column("unchanged_frames"), 0)).as_py()
    summary.unchanged_frames += skipped or 0
    for reason in table.column("error").to_pylist():
        if reason is not None:
            summary.errors += 1
            summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
