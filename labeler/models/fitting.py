"""Batches that do not fit in GPU memory, run in parts that do.

A batch size right for one GPU runs out of memory on a smaller one: Florence-2 large at
batch 128 peaked at 49 GiB on an H200 (docs/benchmarks.md), twice a 24 GB A10G. Without this,
every batch of such a job would fail and be retried image by image, at batch 1's speed (OWLv2
B/16: 129 images/s against 277 at batch 128). Here a batch that raises
torch.OutOfMemoryError is run again in halves, halved again while they do not fit; the part
size that ran is kept, so later batches are cut into parts of it at once and pay for no
more failed attempts. The job's rows are the same: each part is the same adapter call on
fewer images.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from labeler.models.base import ImageInput

log = logging.getLogger(__name__)

STAGES = ("preprocess_ms", "predict_ms", "postprocess_ms")


class MemoryFit:
    """Runs an adapter's `run_timed` on parts of a batch no larger than `part`, the largest
    size not yet seen to run out of GPU memory (None: no limit seen). One per actor or
    replica: what fits is a property of its GPU and model."""

    def __init__(self) -> None:
        self.part: int | None = None

    def run_timed(self, adapter: Any, images: list[ImageInput],
                  stacked: np.ndarray | None = None,
                  transformed: bool = True) -> tuple[list[dict], dict[str, float]]:
        """adapter.run_timed over the batch, in parts when it does not fit: the outputs in
        the images' order and the per-image stage times (ms) over all parts. An image that
        does not fit alone raises torch.OutOfMemoryError."""
        outputs: list[dict] = []
        spent = dict.fromkeys(STAGES, 0.0)  # ms over the images done
        start = 0
        while start < len(images):
            size = min(len(images) - start, self.part or len(images))
            part = images[start:start + size]
            rows = stacked[start:start + size] if stacked is not None else None
            try:
                done, timings = adapter.run_timed(part, rows, transformed=transformed)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                out_of_memory = True
            else:
                out_of_memory = False
            if out_of_memory:  # outside the handler: its traceback no longer holds tensors
                self._shrink(size)
                continue
            outputs.extend(done)
            for stage in STAGES:
                spent[stage] += timings[stage] * size
            start += size
        return outputs, {stage: spent[stage] / len(images) for stage in STAGES}

    def _shrink(self, size: int) -> None:
        """A part of `size` ran out of memory: parts of half that from now on."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the failed attempt's blocks, for the halves
        self.part = math.ceil(size / 2)
        log.warning("a batch of %d images ran out of GPU memory; running parts of %d from "
                    "now on (a resources.batch_size of %d would spare the failed attempt)",
                    size, self.part, self.part)
