"""The model actor of a batch job: decoded rows in, annotation records out.

Ray Data builds one per pool worker (`map_batches(Predictor, ...)`); the weights load in
__init__, on the worker, and stay for every batch. Rows that failed to decode pass through as
error rows; a batch that runs out of GPU memory runs in parts that fit (MemoryFit); a batch
that fails otherwise is retried row by row, so one bad input never takes its neighbours down
with it.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import torch

from labeler.config import TaskSpec
from labeler.jobs.examples import EXAMPLES_COLUMN, parse_examples
from labeler.models.base import Adapter, ImageInput, pick_device
from labeler.models.fitting import MemoryFit
from labeler.registry import load_adapter_class
from labeler.schemas import RECORD_SCHEMA
from labeler.testing.faults import crash_if_marked

log = logging.getLogger(__name__)

# The sink routes rows to output files by shard and completes an input when its last part
# arrived (sinks.parquet.ROUTING_COLUMNS); these columns are dropped before writing.
OUTPUT_SCHEMA = (RECORD_SCHEMA.append(pa.field("shard", pa.int64(), nullable=False))
                 .append(pa.field("part_index", pa.int64(), nullable=False))
                 .append(pa.field("last_part", pa.bool_(), nullable=False))
                 # A video's last row: its frames min_change skipped (jobs.video); the job
                 # summary counts them. Null on rows made without a decode (lost inputs).
                 .append(pa.field("unchanged_frames", pa.int64())))
# Optional per-row columns of video rows (see jobs.video) and how "absent" is written in them
# (numpy columns between stages hold no None).
_VIDEO_COLUMNS = ("frame_index", "timestamp_s", "clip_start_s", "clip_end_s")


def build_adapter(task: TaskSpec, device: torch.device | None = None) -> Adapter:
    """Instantiate and set up the adapter of a task on `device` (default: pick_device())."""
    device = device or pick_device()
    # By default one intra-op thread per reserved core, so the actor leaves the decode tasks
    # their cores; torch_threads may ask for more where decoding leaves cores idle. A GPU
    # actor too, whatever OMP_NUM_THREADS the environment gives Ray's workers: each thread
    # that runs batches (concurrent_batches) gets its own OpenMP team of that size, whose
    # threads spin while idle, and teams of every core slowed the thread in predict
    # (docs/benchmarks.md, "Second run").
    torch.set_num_threads(task.resources.intra_op_threads)
    adapter = load_adapter_class(task.task, task.model.family)(task)
    adapter.setup(device)
    return adapter


class Predictor:
    """map_batches callable: numpy batch from `decode_batch` -> this task's records.

    input_column: where this task's images are (see jobs.stages.input_column).
    passthrough: for jobs of several tasks. False: return a pyarrow table of records (the
        last stage of a one-task job). True: return the input batch, less `drop_columns`,
        plus a column `record__<task name>` holding each row's record as JSON, for the next
        task's actors; `explode_records` turns those columns into rows at the end.
    """

    def __init__(self, task: TaskSpec, input_column: str = "image", passthrough: bool = False,
                 drop_columns: tuple[str, ...] = ()):
        self.task = task
        self.input_column = input_column
        self.passthrough = passthrough
        self.drop_columns = set(drop_columns)
        self.adapter = build_adapter(task)
        self.parameters = self.adapter.parameters_json()
        self.fit = MemoryFit()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        crash_if_marked(batch["uri"], batch.get("frame_index"))  # tests: labeler.testing.faults
        records = self.records(batch)
        if not self.passthrough:
            return pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA)
        out = {k: v for k, v in batch.items() if k not in self.drop_columns}
        out[f"record__{self.task.output_name}"] = np.array(
            [json.dumps(r) for r in records], dtype=object)
        return out

    def records(self, batch: dict[str, np.ndarray]) -> list[dict]:
        """One record dict (OUTPUT_SCHEMA fields) per row of the batch."""
        n = len(batch["id"])
        errors: list[str | None] = [str(e) or None for e in batch["error"]]
        good = [i for i in range(n) if errors[i] is None]
        prompts = batch.get("prompt")
        captions = self.captions(batch, errors)
        examples = self.examples(batch, good, errors)
        good = [i for i in good if errors[i] is None]
        results: dict[int, dict] = {}
        timings = {"preprocess_ms": None, "predict_ms": None, "postprocess_ms": None}
        if good:
            column = batch[self.input_column]
            images = [ImageInput(column[i], int(batch["width"][i]), int(batch["height"][i]),
                                 prompt=(str(prompts[i]) or None) if prompts is not None else None,
                                 caption=captions[i] if captions is not None else None,
                                 examples=examples.get(i, ()))
                      for i in good]
            # Equal-shaped rows arrive as one (n, ...) array: hand it over without a copy.
            stacked = column if column.dtype != object and len(good) == n else None
            try:
                outputs, timings = self.fit.run_timed(self.adapter, images, stacked)
                results = dict(zip(good, outputs))
            except Exception:  # noqa: BLE001 - isolate the failing row(s) below
                log.warning("batch of %d failed; retrying row by row", len(good), exc_info=True)
                for i, image in zip(good, images):
                    try:
                        results[i] = self.adapter.run_timed([image])[0][0]
                    except Exception as err:  # noqa: BLE001 - becomes this row's error
                        errors[i] = f"model failed: {type(err).__name__}: {err}"
        return [self._record(batch, i, results.get(i), errors[i], timings,
                             examples.get(i)) for i in range(n)]

    def examples(self, batch: dict[str, np.ndarray], rows: list[int],
                 errors: list[str | None]) -> dict[int, tuple]:
        """{row: its examples} for a detect-by-example task whose rows bring them (the
        input's `examples`, labeler.jobs.examples); a row whose examples are not valid
        for its image gets the reason in errors[row]."""
        column = batch.get(EXAMPLES_COLUMN)
        if column is None or self.task.task != "detect-by-example":
            return {}
        found = {}
        for i in rows:
            if not column[i]:
                continue
            try:
                found[i] = parse_examples(str(column[i]), int(batch["width"][i]),
                                          int(batch["height"][i]))
            except ValueError as err:
                errors[i] = str(err)
        return found

    def captions(self, batch: dict[str, np.ndarray],
                 errors: list[str | None]) -> list[str | None] | None:
        """Each row's caption for pseudo-label: the text of the task named by caption_from
        (its record in this batch), else the column `caption__<task name>` ("" = none);
        None when the task takes no caption. A row whose caption task failed gets that
        failure in errors[row]: labeling it from no caption would pass the failure off as
        an image without objects."""
        if self.task.task != "pseudo-label":
            return None
        source = self.task.pseudo_label.caption_from
        if source is not None:
            records = [json.loads(str(r)) for r in batch[f"record__{source}"]]
            for i, record in enumerate(records):
                if errors[i] is None and record.get("error"):
                    errors[i] = f"caption task {source!r} failed: {record['error']}"
            return [record.get("text") for record in records]
        column = batch.get(f"caption__{self.task.output_name}")
        if column is None:
            return [None] * len(batch["id"])
        return [str(c) or None for c in column]

    def _record(self, batch, i: int, result: dict | None, error: str | None,
                timings: dict[str, float | None], examples: tuple | None = None) -> dict:
        """Row i's record; examples: the row's own (its queries), added to its parameters
        as the online API records a request's."""
        ok = error is None
        spec = self.task
        parameters = self.adapter.parameters_json(examples) if examples else self.parameters
        return {
            "id": str(batch["id"][i]), "uri": str(batch["uri"][i]),
            "width": int(batch["width"][i]) or None, "height": int(batch["height"][i]) or None,
            "task": spec.task, "task_name": spec.output_name,
            "model": spec.model.source, "model_family": spec.model.family,
            "model_revision": self.adapter.revision, "parameters": parameters,
            **(result or {}),
            "error": error,
            "timings": {"decode_ms": float(batch["decode_ms"][i]), **(timings if ok else {})},
            **_video_fields(batch, i),
            "shard": int(batch["shard"][i]),
            "part_index": int(batch["part_index"][i]) if "part_index" in batch else 0,
            "last_part": bool(batch["last_part"][i]) if "last_part" in batch else True,
            "unchanged_frames": (int(batch["unchanged_frames"][i])
                                 if "unchanged_frames" in batch else 0),
        }


def _video_fields(batch: dict[str, np.ndarray], i: int) -> dict:
    """A video row's frame / clip position and video metadata, from the decode stage's
    columns: -1 or NaN means absent (frame_index of a clip row), `video` is JSON or ""."""
    fields = {}
    for name in _VIDEO_COLUMNS:
        if name in batch:
            value = batch[name][i]
            if name == "frame_index":
                fields[name] = int(value) if value >= 0 else None
            else:
                fields[name] = float(value) if not np.isnan(value) else None
    if "video" in batch and str(batch["video"][i]):
        fields["video"] = json.loads(str(batch["video"][i]))
    return fields


def explode_records(batch: dict[str, np.ndarray], task_names: list[str]) -> pa.Table:
    """Last stage of a several-task job: the `record__<task>` JSON columns -> one row per
    input and task, as a pyarrow table of OUTPUT_SCHEMA."""
    rows = [json.loads(text) for name in task_names for text in batch[f"record__{name}"]]
    return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
