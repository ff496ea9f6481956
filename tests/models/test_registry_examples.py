"""Every registry key has a worked example, and every example runs on its tiny checkpoint
(vLLM's habit: a new adapter without an example fails here)."""

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import ADAPTERS, CLIP_TASKS, GENERATIVE_FAMILIES, load_adapter_class
from labeler.testing.samples import synthetic_image

# (task, family) -> (extra TaskSpec fields, the record field the output must fill)
EXAMPLES = {
    ("caption", "blip2"): ({}, "text"),
    ("ask", "blip2"): ({"prompt": "what is in the image?"}, "text"),
    ("detect", "florence2"): ({"threshold": 0.0}, "detections"),
    ("ground", "florence2"): ({"prompt": "a red car", "threshold": 0.0}, "detections"),
    ("caption", "florence2"): ({"prompt": "<MORE_DETAILED_CAPTION>"}, "text"),
    ("ocr", "florence2"): ({"prompt": "<OCR_WITH_REGION>", "threshold": 0.0}, "ocr_regions"),
    ("regions", "florence2"): ({"threshold": 0.0}, "detections"),
    ("caption", "ovis2"): ({}, "text"),
    ("ocr", "ovis2"): ({}, "text"),
    ("ask", "ovis2"): ({"prompt": "what colour is the sky?"}, "text"),
    ("detect", "owlv2"): ({"labels": ["cat", "dog"]}, "detections"),
    ("ground", "owlv2"): ({"prompt": "a red car, a person"}, "detections"),
    ("detect-by-example", "owlv2"): ({"query_image": "QUERY"}, "detections"),
    ("pseudo-label", "owlv2"): ({"pseudo_label": {"vocabulary": ["cat", "dog"]},
                                 "threshold": 0.0}, "detections"),
    ("ground", "qwen2_vl"): ({"threshold": 0.0}, "detections"),
    ("caption", "qwen2_vl"): ({}, "text"),
    ("ocr", "qwen2_vl"): ({}, "text"),
    ("ask", "qwen2_vl"): ({"prompt": "how many shapes are there?"}, "text"),
    ("video-caption", "qwen2_vl"): ({}, "text"),
    ("video-ask", "qwen2_vl"): ({"prompt": "what moves?"}, "text"),
}


def test_every_registry_key_has_an_example():
    assert set(EXAMPLES) == set(ADAPTERS)


@pytest.fixture(scope="module")
def query_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("query") / "red_mug.png"
    synthetic_image(64, 48, seed=7).save(path)
    return str(path)


@pytest.mark.parametrize("key", sorted(EXAMPLES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_example_runs_and_fills_its_field(key, tiny_model, query_image):
    task, family = key
    fields, output_field = EXAMPLES[key]
    fields = {k: (query_image if v == "QUERY" else v) for k, v in fields.items()}
    generation = {"max_new_tokens": 12} if family in GENERATIVE_FAMILIES else {}
    spec = TaskSpec(task=task, model={"family": family, "source": tiny_model(family)},
                    generation=generation, **fields)
    adapter = load_adapter_class(task, family)(spec)
    adapter.setup(torch.device("cpu"))
    images = [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate([(96, 64), (50, 80)])]
    if task in CLIP_TASKS:  # a clip per row, (T, h, w, 3): here 2 frames
        images = [np.stack([im, np.asarray(synthetic_image(im.shape[1], im.shape[0], seed=i + 10))])
                  for i, im in enumerate(images)]
    out = adapter([ImageInput(im, im.shape[-2], im.shape[-3]) for im in images])
    assert len(out) == 2
    for result, image in zip(out, images):
        assert output_field in result
        value = result[output_field]
        assert value is not None
        if output_field == "detections":
            for d in value:
                assert 0 <= d["x0"] <= d["x1"] <= image.shape[1]
                assert 0 <= d["y0"] <= d["y1"] <= image.shape[0]
                assert 0 <= d["score"] <= 1
