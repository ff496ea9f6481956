"""MemoryFit against a real CUDA out-of-memory error: the process's share of the GPU is cut
to what a few images need (torch.cuda.set_per_process_memory_fraction), a batch of 128 runs
out of it, and the batch still comes back whole, in parts that fit, each image's best
scores as a batch of four gives them (within bf16's differences between batch sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.fitting import MemoryFit
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

pytestmark = pytest.mark.gpu

BATCH = 128


def test_a_batch_over_the_gpus_memory_runs_in_parts(tiny_model):
    spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_model("owlv2")},
                    labels=["a cat", "a dog"], threshold=0.0, max_detections=3,
                    resources={"num_gpus": 1})
    adapter = load_adapter_class("detect", "owlv2")(spec)
    adapter.setup(torch.device("cuda"))
    pool = [np.asarray(synthetic_image(640, 480, seed)) for seed in range(4)]
    images = [ImageInput(pool[k % 4], 640, 480) for k in range(BATCH)]
    expected, _ = adapter.run_timed(images[:4], transformed=False)

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    adapter.run_timed(images[:8], transformed=False)
    per_8 = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((base + 3 * per_8) / total)  # ~24 images
    try:
        fit = MemoryFit()
        outputs, timings = fit.run_timed(adapter, images, transformed=False)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert fit.part is not None and fit.part < BATCH, "the batch was expected not to fit"
    assert len(outputs) == BATCH and timings["predict_ms"] > 0
    for k, out in enumerate(outputs):  # bf16: other batch sizes, other kernels, near ties
        want = expected[k % 4]["detections"]
        assert len(out["detections"]) == len(want) == 3
        assert sorted(d["score"] for d in out["detections"]) == pytest.approx(
            sorted(d["score"] for d in want), abs=0.02)
