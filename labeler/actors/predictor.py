"""The model actor of a batch job: decoded rows in, annotation records out.

Ray Data builds one per pool worker (`map_batches(Predictor, ...)`); the weights load in
__init__, on the worker, and stay for every batch. Rows that failed to decode pass through as
error rows; a batch that fails as a whole is retried row by row, so one bad input never takes
its neighbours down with it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import torch

from labeler.config import TaskSpec
from labeler.models.base import Adapter, ImageInput, pick_device
from labeler.registry import load_adapter_class
from labeler.schemas import RECORD_SCHEMA

log = logging.getLogger(__name__)

# The sink routes rows to output files by shard; the column is dropped before writing.
OUTPUT_SCHEMA = RECORD_SCHEMA.append(pa.field("shard", pa.int64(), nullable=False))


def build_adapter(task: TaskSpec, device: torch.device | None = None) -> Adapter:
    """Instantiate and set up the adapter of a task on `device` (default: pick_device())."""
    device = device or pick_device()
    if device.type == "cpu":
        # One intra-op thread per reserved core: more would fight the decode tasks for CPUs.
        torch.set_num_threads(max(1, int(task.resources.num_cpus)))
    adapter = load_adapter_class(task.task, task.model.family)(task)
    adapter.setup(device)
    return adapter


class Predictor:
    """map_batches callable: numpy batch from `decode_batch` -> pyarrow table of records."""

    def __init__(self, task: TaskSpec):
        self.task = task
        self.adapter = build_adapter(task)
        self.parameters = self.adapter.parameters_json()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["id"])
        errors: list[str | None] = [str(e) or None for e in batch["error"]]
        good = [i for i in range(n) if errors[i] is None]
        results: dict[int, dict] = {}
        timings = {"preprocess_ms": None, "predict_ms": None, "postprocess_ms": None}
        if good:
            images = [ImageInput(batch["image"][i], int(batch["width"][i]), int(batch["height"][i]))
                      for i in good]
            column = batch["image"]
            # Equal-shaped rows arrive as one (n, ...) array: hand it over without a copy.
            stacked = column if column.dtype != object and len(good) == n else None
            try:
                outputs, timings = self._run(images, stacked)
                results = dict(zip(good, outputs))
            except Exception:  # noqa: BLE001 - isolate the failing row(s) below
                log.warning("batch of %d failed; retrying row by row", len(good), exc_info=True)
                for i, image in zip(good, images):
                    try:
                        results[i] = self._run([image])[0][0]
                    except Exception as err:  # noqa: BLE001 - becomes this row's error
                        errors[i] = f"model failed: {type(err).__name__}: {err}"
        return pa.Table.from_pylist(
            [self._record(batch, i, results.get(i), errors[i], timings) for i in range(n)],
            schema=OUTPUT_SCHEMA,
        )

    def _run(self, images: list[ImageInput], stacked: np.ndarray | None = None
             ) -> tuple[list[dict], dict[str, float]]:
        """preprocess -> predict -> postprocess with per-row stage times in ms."""
        adapter, clock = self.adapter, time.perf_counter
        with torch.inference_mode():
            t0 = clock()
            inputs = adapter.preprocess(images, stacked)
            t1 = clock()
            raw = adapter.predict(inputs)
            if adapter.device is not None and adapter.device.type == "cuda":
                torch.cuda.synchronize(adapter.device)  # so predict_ms is the GPU time
            t2 = clock()
            outputs = adapter.postprocess(raw, images)
            t3 = clock()
        per_row = 1000.0 / len(images)
        return outputs, {"preprocess_ms": (t1 - t0) * per_row, "predict_ms": (t2 - t1) * per_row,
                         "postprocess_ms": (t3 - t2) * per_row}

    def _record(self, batch, i: int, result: dict | None, error: str | None,
                timings: dict[str, float | None]) -> dict:
        ok = error is None
        spec = self.task
        return {
            "id": str(batch["id"][i]), "uri": str(batch["uri"][i]),
            "width": int(batch["width"][i]) or None, "height": int(batch["height"][i]) or None,
            "task": spec.task, "task_name": spec.output_name,
            "model": spec.model.source, "model_family": spec.model.family,
            "model_revision": self.adapter.revision, "parameters": self.parameters,
            **(result or {}),
            "error": error,
            "timings": {"decode_ms": float(batch["decode_ms"][i]), **(timings if ok else {})},
            "shard": int(batch["shard"][i]),
        }
