"""model.compile (OWLv2's vision tower through torch.compile) against the same model
uncompiled.

Issue 8: a change in how a model computes keeps parity with the unmodified transformers
model, float32 on CPU within 1e-5 (relative, and absolute per unit of the output's largest
magnitude, as tests/models/test_attention_backends.py compares). Inductor on CPU fuses the
elementwise work and reorders sums: the outputs may move by float32 rounding, no more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

TOLERANCE = 1e-5
LABELS = ["a cat", "a red car", "dog"]


def _detector(folder: str, compile: bool):
    spec = TaskSpec(task="detect", labels=LABELS, threshold=0.0,
                    model={"family": "owlv2", "source": folder, "compile": compile})
    adapter = load_adapter_class("detect", "owlv2")(spec)
    adapter.setup(torch.device("cpu"))
    return adapter


@pytest.mark.slow
def test_compiled_vision_tower_gives_the_uncompiled_outputs(tiny_owlv2):
    images = [ImageInput(pixels=np.asarray(synthetic_image(w, h, seed)), width=w, height=h)
              for seed, (w, h) in enumerate([(96, 64), (50, 80)])]
    plain, compiled = _detector(tiny_owlv2, False), _detector(tiny_owlv2, True)
    assert plain.compiled_embedder is None and compiled.compiled_embedder is not None
    torch._dynamo.reset()  # count this test's compiles only
    with torch.inference_mode():
        expected = plain.predict(plain.model_inputs(images))
        actual = compiled.predict(compiled.model_inputs(images))
        again = compiled.predict(compiled.model_inputs(images))  # the compiled graph, reused
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 1, "the vision tower was not compiled"
    for key in ("logits", "boxes", "objectness"):
        scale = max(1.0, float(expected[key].abs().max()))
        torch.testing.assert_close(actual[key], expected[key], rtol=TOLERANCE,
                                   atol=TOLERANCE * scale, msg=lambda m: f"{key}: {m}")
        torch.testing.assert_close(again[key], actual[key], rtol=0, atol=0)
    for got, want in zip(compiled.postprocess(actual, images), plain.postprocess(expected, images)):
        assert [d["label"] for d in got["detections"]] == [d["label"] for d in want["detections"]]
        for box, ref in zip(got["detections"], want["detections"]):
            assert [box[k] for k in ("score", "x0", "y0", "x1", "y1")] == pytest.approx(
                [ref[k] for k in ("score", "x0", "y0", "x1", "y1")], rel=1e-4, abs=1e-4)
