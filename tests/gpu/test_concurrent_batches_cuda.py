"""Two batches at once on CUDA (resources.concurrent_batches; OWLv2's default on a GPU): a
GPU actor's two threads share one adapter on one device, one at a time inside
Adapter.device_turn; every batch gets the results it gets alone. OWLv2 preprocesses on the
device; compiled Florence-2 decodes with a static cache through CUDA graphs, which torch
records once per thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

pytestmark = pytest.mark.gpu

BATCHES, PER_BATCH = 8, 4


@pytest.mark.parametrize(("family", "task", "compile_model", "options"), [
    ("owlv2", "detect", False, {"labels": ["a cat", "a dog"], "threshold": 0.0,
                                "max_detections": 3}),
    ("florence2", "caption", True, {"generation": {"max_new_tokens": 8}}),
])
def test_batches_run_at_once_on_cuda_get_their_own_results(tiny_model, family, task,
                                                           compile_model, options):
    spec = TaskSpec(task=task, model={"family": family, "source": tiny_model(family),
                                      "compile": compile_model},
                    resources={"num_gpus": 1}, **options)
    adapter = load_adapter_class(task, family)(spec)
    adapter.setup(torch.device("cuda"))
    batches = [[ImageInput(np.asarray(synthetic_image(640, 480, PER_BATCH * b + k)), 640, 480)
                for k in range(PER_BATCH)] for b in range(BATCHES)]

    def run(batch):
        return adapter.run_timed(batch, transformed=False)[0]

    alone = [run(batch) for batch in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(run, batches))
    for got_batch, want_batch in zip(together, alone):
        for got, want in zip(got_batch, want_batch):
            if family == "florence2":
                assert got["text"] == want["text"]
                continue
            assert [d["label"] for d in got["detections"]] == [
                d["label"] for d in want["detections"]]
            for a, b in zip(got["detections"], want["detections"]):
                assert a["score"] == pytest.approx(b["score"], abs=1e-3)
                assert [a[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(
                    [b[k] for k in ("x0", "y0", "x1", "y1")], abs=0.5)
