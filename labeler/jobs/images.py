"""Image labeling job: plan inputs -> decode (CPU tasks) -> model actors -> Parquet.

    from_items(rows)                       {id, uri, shard}, one per pending input
      .map_batches(decode_batch)           CPU tasks: read + decode, error rows for bad input
      .map_batches(Predictor, ...)         actor pool per task: num_gpus, batch size, pool size
      .iter_batches() on the driver        ShardedParquetSink commits one file per shard
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from labeler.config import JobSpec, SpecError, TaskSpec
from labeler.sinks.parquet import ShardedParquetSink
from labeler.sources import InputItem, plan_source
from labeler.storage import storage_env

log = logging.getLogger(__name__)

# Rows per decode task: enough to amortise task overhead (~ms), small enough that the model
# actor is fed before the whole input is decoded.
DECODE_BATCH = 16
# Peak memory of one decode task, so Ray does not start more than fit. Measured by Ray Data:
# ~955 MiB for 16 OWLv2 inputs at 960 px as float32 (12 MB each, plus the decoded images
# and Arrow's copies of the output batch).
DECODE_TASK_MEMORY = 1024 * 1024**2
MIN_BATCHES_FOR_RATE = 5


@dataclass
class JobSummary:
    """What a finished job reports; also written to <output>/_SUCCESS."""

    output: str
    inputs: int
    rows: int = 0
    errors: int = 0
    skipped_inputs: int = 0  # already committed by an earlier run of the same job
    ray_start_s: float = 0.0
    first_result_s: float = 0.0  # after Ray start: model load + the first batch
    wall_s: float = 0.0
    steady_images_per_s: float = 0.0  # rows after the first batch / time after it
    error_reasons: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        after_start = max(self.wall_s - self.ray_start_s, 1e-9)
        steady = (f"{self.steady_images_per_s:.1f} images/s steady" if self.steady_images_per_s
                  else f"{self.rows / after_start:.1f} images/s with model load "
                       f"(too few batches for a steady rate)")
        return [
            f"rows: {self.rows} ({self.inputs} inputs, {self.skipped_inputs} already done), "
            f"errors: {self.errors}",
            f"throughput: {steady} "
            f"(ray start {self.ray_start_s:.1f}s, model load + first batch {self.first_result_s:.1f}s, "
            f"wall {self.wall_s:.1f}s)",
            *(f"  error x{n}: {reason}" for reason, n in sorted(self.error_reasons.items())[:10]),
            f"output: {self.output}",
        ]


def _model_stages(ds, tasks: list[TaskSpec]):
    """One actor pool per task over the decoded rows. A one-task job's actors emit record
    tables; with several tasks each pool passes the rows on with its records as JSON, and a
    last CPU stage turns them into one row per input and task. Image columns are dropped
    by the last pool that reads them, so later stages move only records."""
    import ray

    from labeler.actors.predictor import Predictor, explode_records
    from labeler.jobs.stages import input_column

    columns = [input_column(t) for t in tasks]
    for k, task in enumerate(tasks):
        res = task.resources
        later = set(columns[k + 1:])
        drop = tuple(c for c in set(columns[: k + 1]) if c not in later)
        ds = ds.map_batches(
            Predictor,
            fn_constructor_kwargs={"task": task, "input_column": columns[k],
                                   "passthrough": len(tasks) > 1, "drop_columns": drop},
            batch_size=res.batch_size, compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            num_gpus=res.num_gpus, num_cpus=res.num_cpus, batch_format="numpy",
            **worker_env())
    if len(tasks) > 1:
        ds = ds.map_batches(explode_records, fn_kwargs={"task_names": [t.output_name for t in tasks]},
                            batch_format="numpy", num_cpus=0.5)
    return ds


def worker_env() -> dict:
    """Remote args that give decode tasks and model actors the driver's storage settings
    (S3 endpoint, region, keys, model cache: see labeler.storage), so `s3://` inputs and
    models resolve the same way on every node; none when the driver has none."""
    env = storage_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def check_local_capacity(spec: JobSpec, cpus: float) -> None:
    """A local Ray cannot grow: if the actors' CPUs leave none for decoding, the job would
    wait forever. Fail at once instead, saying what to change."""
    needed = sum(t.resources.num_cpus * t.resources.concurrency for t in spec.tasks)
    if needed + 1 > cpus:
        raise SpecError(
            f"tasks.*.resources: the model actors reserve {needed:g} CPUs and decoding needs 1, "
            f"but this Ray has {cpus:g}; lower num_cpus or concurrency (fractions such as 0.5 "
            f"share a core)")


def _local_cpus(spec: JobSpec) -> float:
    """CPUs of the local Ray this job runs on (already started, or about to be)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("CPU", 0)
    return spec.ray.num_cpus or os.cpu_count() or 1


def job_fingerprint(spec: JobSpec, uris: list[str]) -> str:
    """Hash of the inputs and everything that shapes the rows (not resources or output)."""
    shaping = {
        "input": spec.input.model_dump(exclude={"path"}),
        "tasks": [t.model_dump(exclude={"resources"}) for t in spec.tasks],
        "uris": uris,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def init_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    ray.init(address=spec.ray.address, num_cpus=spec.ray.num_cpus,
             logging_level=logging.WARNING, configure_logging=True, log_to_driver=True)


def run_image_job(spec: JobSpec, progress: bool = True) -> JobSummary:
    """Run a validated image job to completion; returns its summary.

    Everything that can fail without labeling anything is checked first, in order: the
    input listing (StorageError naming the URI and cause), the local capacity, then the
    output (StorageError, OutputConflict), before Ray starts."""
    started = time.perf_counter()
    plan = plan_source(spec.input.path, spec.input.files_per_shard)
    items = plan.items
    if not items:
        raise SpecError(f"input.path: no image files found under {spec.input.path!r}")
    expected: dict[int, int] = {}
    for item in items:
        expected[item.shard] = expected.get(item.shard, 0) + 1
    task_names = [t.output_name for t in spec.tasks]
    if spec.ray.address is None:
        check_local_capacity(spec, _local_cpus(spec))
    metadata = plan.metadata
    if metadata is not None:
        metadata = metadata.append_column("shard", pa.array([i.shard for i in items], pa.int64()))
    sink = ShardedParquetSink(spec.output.path, expected, task_names,
                              job_fingerprint(spec, _identities(items)), spec.output.overwrite,
                              metadata=metadata)
    pending = sink.pending_shards()
    caption_columns = _caption_columns(spec, plan)
    todo = [i.row(plan.has_prompts) for i in items if i.shard in pending]
    for row, item in zip(todo, (i for i in items if i.shard in pending)):
        for column, source in caption_columns.items():
            caption = item.metadata.get(source)
            row[column] = "" if caption is None else str(caption)
    summary = JobSummary(output=sink.uri, inputs=len(items),
                         skipped_inputs=len(items) - len(todo))
    if todo:
        _execute(spec, todo, sink, summary, progress)
    summary.wall_s = time.perf_counter() - started
    sink.finish(asdict(summary))
    return summary


def caption_column(task: TaskSpec) -> str:
    """The pipeline column holding a pseudo-label task's captions ("" = none)."""
    return f"caption__{task.output_name}"


def _caption_columns(spec: JobSpec, plan) -> dict[str, str]:
    """{pipeline column: input column} for pseudo-label tasks that read captions from the
    input. An input column that no input has is a spec error: every image would get no
    queries, which is a typo far more often than an intent."""
    columns = {}
    present = set(plan.metadata.column_names) if plan.metadata is not None else set()
    for k, task in enumerate(spec.tasks):
        options = task.pseudo_label
        if task.task != "pseudo-label" or not options.use_captions or options.caption_from:
            continue
        if options.caption_column not in present:
            raise SpecError(
                f"tasks.{k}.pseudo_label.caption_column: no input has a column "
                f"{options.caption_column!r} (input columns: {sorted(present - {'id'}) or 'none'}; "
                f"a folder gives `caption` from a .txt file beside each image, same stem); "
                f"set use_captions: false to label with the vocabulary alone")
        columns[caption_column(task)] = options.caption_column
    return columns


def _identities(items: list[InputItem]) -> list:
    """What identifies each input for the fingerprint: id, uri and its own prompt."""
    return [[i.id, i.uri, i.prompt] for i in items]


def _execute(spec: JobSpec, todo: list[dict], sink: ShardedParquetSink, summary: JobSummary,
             progress: bool) -> None:
    import ray
    from tqdm import tqdm

    from labeler.jobs.stages import decode_batch

    t0 = time.perf_counter()
    init_ray(spec)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts rows written, which is what users watch
    ctx.execution_options.preserve_order = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    summary.ray_start_s = time.perf_counter() - t0

    ds = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / DECODE_BATCH)))
    ds = ds.map_batches(decode_batch, batch_size=DECODE_BATCH,
                        fn_kwargs={"max_pixels": spec.input.max_pixels,
                                   "decode_min_side": spec.input.decode_min_side,
                                   "tasks": list(spec.tasks)},
                        num_cpus=1,
                        # What a task holds: a batch of decoded images. Declaring it also makes
                        # these remote args differ from the actor stage's, which keeps Ray Data
                        # from fusing decode into the model actor, where it would run serially
                        # with the model (on CPU-only runs) instead of in parallel CPU tasks.
                        memory=DECODE_TASK_MEMORY, **worker_env())
    ds = _model_stages(ds, list(spec.tasks))
    total = len(todo) * len(spec.tasks)
    bar = tqdm(total=total, unit="img", disable=not progress, desc="labeling")
    t_start = time.perf_counter()
    t_first = None
    rows_at_first = 0
    batches = 0
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        sink.add(table)
        n = table.num_rows
        summary.rows += n
        errors = [e for e in table.column("error").to_pylist() if e is not None]
        summary.errors += len(errors)
        for reason in errors:
            summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
        if t_first is None:
            t_first, rows_at_first = time.perf_counter(), summary.rows
            summary.first_result_s = t_first - t_start
        bar.update(n)
        batches += 1
    bar.close()
    steady_s = time.perf_counter() - (t_first or t_start)
    steady_rows = summary.rows - rows_at_first
    # A rate over a handful of result batches measures Ray's output buffering, not the
    # pipeline: report it only when enough batches arrived after the first one.
    if batches > MIN_BATCHES_FOR_RATE and steady_s > 0:
        summary.steady_images_per_s = steady_rows / steady_s
