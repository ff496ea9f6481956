"""Pixels staged in pinned memory on CUDA (Adapter.staged, labeler.models.staging): the
buffers are page-locked, and OWLv2 gives the same results as from the pixels where they
were, for photos of several sizes (processor path, one copy each) and for uint8 canvases
handed over stacked (fast path, one copy for the batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

pytestmark = pytest.mark.gpu

SIZES = [(640, 480), (480, 640), (500, 500), (800, 300)]


@pytest.mark.parametrize("preprocess", ["processor", "fast"])
def test_pinned_pixels_give_the_same_detections(tiny_model, preprocess):
    spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_model("owlv2")},
                    labels=["a cat", "a dog"], threshold=0.0, max_detections=3,
                    preprocess=preprocess, resources={"num_gpus": 1})
    adapter = load_adapter_class("detect", "owlv2")(spec)
    adapter.setup(torch.device("cuda"))
    decoded = [np.asarray(synthetic_image(w, h, seed)) for seed, (w, h) in enumerate(SIZES)]
    rows = [adapter.cpu_transform(p) for p in decoded]
    if preprocess == "fast":  # the decode stage's canvases, handed over as one array
        stacked = np.stack(rows)
        images = [ImageInput(row, w, h) for row, (w, h) in zip(stacked, SIZES)]
    else:
        stacked, images = None, [ImageInput(p, w, h) for p, (w, h) in zip(decoded, SIZES)]

    staged, staged_stack = adapter.staged(images, stacked)
    assert all(torch.from_numpy(im.pixels).is_pinned() for im in staged)
    pinned, _ = adapter.run_timed(images, stacked)
    adapter.pin_pixels = False
    unstaged, unstacked = adapter.staged(images, stacked)
    assert unstaged is images and unstacked is stacked
    plain, _ = adapter.run_timed(images, stacked)
    assert [[d["label"] for d in r["detections"]] for r in pinned] == [
        [d["label"] for d in r["detections"]] for r in plain]
    for a, b in zip(pinned, plain):
        assert [d["score"] for d in a["detections"]] == [d["score"] for d in b["detections"]]
