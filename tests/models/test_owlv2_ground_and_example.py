"""OWLv2 grounding (per-row text queries) and detection by example (a query image): the
batched adapters vs the documented single-image usage on the same tiny checkpoint."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Owlv2ForObjectDetection, Owlv2Processor

from labeler.config import TaskSpec
from labeler.models import owlv2
from labeler.models.base import ImageInput
from labeler.models.owlv2 import Owlv2ExampleDetector, Owlv2Grounder, split_queries
from labeler.testing.samples import synthetic_image

THRESHOLD = 0.3
# Wide, tall, square and odd sizes: box mapping through the padded square differs for each.
SIZES = [(200, 60), (50, 200), (96, 96), (47, 33)]
SPEC_PROMPT = "a dog, car"
# Row prompts: different queries per image, some shared, one row on the spec's prompt (None),
# a different number of queries per row.
ROW_PROMPTS = ["a photo of a cat, a dog", "car, a dog, a red car", None, "a person"]


def _ground_spec(model_dir, **kw) -> TaskSpec:
    kw.setdefault("prompt", SPEC_PROMPT)
    return TaskSpec(task="ground", model={"family": "owlv2", "source": model_dir},
                    threshold=THRESHOLD, **kw)


def _example_spec(model_dir, query_image, **kw) -> TaskSpec:
    kw.setdefault("threshold", THRESHOLD)
    return TaskSpec(task="detect-by-example", model={"family": "owlv2", "source": model_dir},
                    query_image=str(query_image), **kw)


def _inputs(images, prompts=None):
    prompts = prompts or [None] * len(images)
    return [ImageInput(im, im.shape[1], im.shape[0], prompt=p) for im, p in zip(images, prompts)]


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def reference(tiny_owlv2):
    """The checkpoint as the documentation loads it."""
    return (Owlv2Processor.from_pretrained(tiny_owlv2),
            Owlv2ForObjectDetection.from_pretrained(tiny_owlv2).eval())


@pytest.fixture(scope="module")
def grounder(tiny_owlv2):
    adapter = Owlv2Grounder(_ground_spec(tiny_owlv2))
    adapter.setup(torch.device("cpu"))
    return adapter


@pytest.fixture(scope="module")
def query_image(tmp_path_factory):
    """An example image on disk, PNG (lossless: the reference reads the same pixels)."""
    path = tmp_path_factory.mktemp("query") / "red_mug.png"
    synthetic_image(64, 80, seed=7).save(path)
    return path


def has_area(det: dict) -> bool:
    """Whether a clipped box still covers some of the image (else it lay in the padding,
    and the adapter drops it)."""
    return det["x1"] > det["x0"] and det["y1"] > det["y0"]


def _clip(box, width, height):
    x0, y0, x1, y1 = box
    return (min(max(x0, 0), width), min(max(y0, 0), height),
            min(max(x1, 0), width), min(max(y1, 0), height))


def _assert_same(ours: list[dict], ref: list[dict]):
    assert [d["label"] for d in ours] == [d["label"] for d in ref]
    for got, want in zip(ours, ref):
        for key in ("score", "x0", "y0", "x1", "y1"):
            assert got[key] == pytest.approx(want[key], abs=1e-4), key


# ---------------------------------------------------------------------------------- ground


def reference_grounding(reference, image: np.ndarray, queries: list[str]) -> list[dict]:
    """processor(text=[queries], images=image) -> model(**inputs) ->
    post_process_grounded_object_detection with the padded square as the target size; boxes
    clipped to the image, sorted by score."""
    processor, model = reference
    pil = Image.fromarray(image)
    inputs = processor(text=[queries], images=pil, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    side = max(pil.size)
    result = processor.post_process_grounded_object_detection(
        outputs, threshold=THRESHOLD, target_sizes=[(side, side)], text_labels=[queries])[0]
    order = torch.argsort(result["scores"], descending=True, stable=True).tolist()
    dets = [dict(zip(("x0", "y0", "x1", "y1"), _clip(result["boxes"][i].tolist(), *pil.size)),
                 label=result["text_labels"][i], score=result["scores"][i].item()) for i in order]
    return [d for d in dets if has_area(d)]


def test_split_queries_cleans_phrases():
    assert split_queries("a red car, a person") == ["a red car", "a person"]
    assert split_queries("a, ,b") == ["a", "b"]
    assert split_queries("  cat ,dog,, cat ,") == ["cat", "dog"]
    assert split_queries(" , ,") == []


def test_batched_grounding_equals_the_documented_usage(reference, grounder, images):
    out = grounder(_inputs(images, ROW_PROMPTS))
    assert len(out) == len(images)
    for image, prompt, result in zip(images, ROW_PROMPTS, out):
        queries = split_queries(prompt or SPEC_PROMPT)
        assert result["prompt"] == ", ".join(queries)
        assert "warnings" not in result
        ref = reference_grounding(reference, image, queries)
        assert len(ref) > 0, "the tiny model should find something at this threshold"
        assert {d["label"] for d in result["detections"]} <= set(queries)
        _assert_same(result["detections"], ref)


def test_labels_are_the_default_queries(tiny_owlv2, reference, images):
    labels = ["a photo of a cat", "car"]
    adapter = Owlv2Grounder(_ground_spec(tiny_owlv2, prompt=None, labels=labels))
    adapter.setup(torch.device("cpu"))
    assert Owlv2Grounder.default_prompt is None
    out = adapter(_inputs(images[:3], [None, "a dog", None]))
    assert [r["prompt"] for r in out] == ["a photo of a cat, car", "a dog", "a photo of a cat, car"]
    _assert_same(out[0]["detections"], reference_grounding(reference, images[0], labels))
    _assert_same(out[1]["detections"], reference_grounding(reference, images[1], ["a dog"]))


def test_text_tower_runs_once_per_batch_and_only_for_new_queries(tiny_owlv2, images,
                                                                 monkeypatch):
    adapter = Owlv2Grounder(_ground_spec(tiny_owlv2))
    adapter.setup(torch.device("cpu"))
    calls = []
    original = adapter.model.owlv2.get_text_features
    monkeypatch.setattr(adapter.model.owlv2, "get_text_features",
                        lambda *a, **k: calls.append(k["input_ids"].shape[0]) or original(*a, **k))
    batch = _inputs(images[:3], ["cat, dog", "dog, car", "cat"])
    first = adapter(batch)
    assert calls == [3]  # one call for the batch's three distinct queries
    assert adapter(batch) == first and calls == [3]  # all cached: no call
    adapter(_inputs(images[:2], ["car, bird", "dog"]))
    assert calls == [3, 1]  # only "bird" is new

    monkeypatch.setattr(owlv2, "TEXT_CACHE_SIZE", 2)
    adapter(_inputs(images[:2], ["cat", "fish"]))  # "fish" encoded; cache keeps cat, fish
    assert calls == [3, 1, 1] and list(adapter.text_cache) == ["cat", "fish"]
    adapter(_inputs(images[:1], ["dog"]))  # "dog" was evicted: encoded again
    assert calls == [3, 1, 1, 1] and list(adapter.text_cache) == ["fish", "dog"]


def test_a_row_without_phrases_gets_a_warning_not_an_error(grounder, images):
    out = grounder(_inputs(images[:2], [" , ,", "a dog"]))
    assert out[0]["detections"] == [] and out[0]["prompt"] == ""
    assert "holds no query phrase" in out[0]["warnings"][0]
    assert out[1]["prompt"] == "a dog" and "warnings" not in out[1]
    only = grounder(_inputs(images[:1], [","]))[0]  # no query in the whole batch
    assert only["detections"] == [] and len(only["warnings"]) == 1


def test_an_over_long_query_is_truncated_with_a_warning(grounder, images):
    long_query = "a very " * 20 + "long phrase"
    out = grounder(_inputs(images[:2], [f"{long_query}, a dog", "a dog"]))
    assert out[0]["warnings"] == [f"query {long_query!r} is longer than the text model's 16 "
                                  "tokens; it was truncated"]
    assert "warnings" not in out[1]
    assert all(d["label"] in (long_query, "a dog") for d in out[0]["detections"])


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": None}, "needs default queries"),
    ({"prompt": " , ,"}, "holds no query phrase"),
    ({"prompt": "a cat", "labels": ["a dog"]}, "not both"),
])
def test_ground_check_spec_errors(tiny_owlv2, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _ground_spec(tiny_owlv2, **kwargs)


# ---------------------------------------------------------------------- detect-by-example


def reference_example(reference, image: np.ndarray, query: Image.Image, threshold: float,
                      nms_threshold: float) -> list[dict]:
    """processor(images=image, query_images=query) -> model.image_guided_detection ->
    post_process_image_guided_detection with the padded square as the target size; boxes
    clipped to the image (those left without area dropped), sorted. Each box also gets the
    sigmoid score of its patch (found by its box), which the adapter reports instead of the
    post-processing's display alpha, and the image's best score (`best`), which that alpha
    is relative to."""
    processor, model = reference
    pil = Image.fromarray(image)
    inputs = processor(images=pil, query_images=query, return_tensors="pt")
    with torch.no_grad():
        outputs = model.image_guided_detection(**inputs)
    side = max(pil.size)
    result = processor.post_process_image_guided_detection(
        outputs, threshold=threshold, nms_threshold=nms_threshold,
        target_sizes=torch.tensor([[side, side]]))[0]
    patch_boxes = owlv2.box_corners(outputs.target_pred_boxes[0]) * side  # (P, 4)
    sigmoid = torch.sigmoid(outputs.logits[0].max(dim=-1).values)  # (P,)
    order = torch.argsort(result["scores"], descending=True, stable=True).tolist()
    dets = []
    for i in order:
        box = result["boxes"][i]
        patch = (patch_boxes - box).abs().sum(dim=-1).argmin()
        dets.append(dict(zip(("x0", "y0", "x1", "y1"), _clip(box.tolist(), *pil.size)),
                         label="red_mug", score=sigmoid[patch].item(),
                         alpha=result["scores"][i].item(), best=sigmoid.max().item()))
    return [d for d in dets if has_area(d)]


@pytest.mark.parametrize("threshold, nms_threshold", [(THRESHOLD, 0.3), (0.0, 0.5), (0.3, 1.0)])
def test_batched_example_detection_equals_the_documented_usage(
        tiny_owlv2, reference, images, query_image, threshold, nms_threshold):
    adapter = Owlv2ExampleDetector(_example_spec(tiny_owlv2, query_image, threshold=threshold,
                                                 nms_threshold=nms_threshold))
    adapter.setup(torch.device("cpu"))
    out = adapter(_inputs(images, ["ignored"] * len(images)))
    assert len(out) == len(images)
    query = Image.open(query_image)
    for image, result in zip(images, out):
        ref = reference_example(reference, image, query, threshold, nms_threshold)
        assert len(ref) > 0
        dets = result["detections"]
        _assert_same(dets, ref)
        # The documented alpha is the score rescaled by the image's best score (a box in the
        # padding, dropped, may be that best).
        best = ref[0]["best"] + 1e-6
        for d, want in zip(dets, ref):
            alpha = min(1.0, (d["score"] - 0.1 * best) / (0.9 * best))
            assert alpha == pytest.approx(want["alpha"], abs=1e-4)


def test_nms_drops_overlapping_boxes(tiny_owlv2, images, query_image):
    counts = []
    for nms_threshold in (0.3, 1.0):  # 1.0: no IoU is above it, NMS is off
        adapter = Owlv2ExampleDetector(_example_spec(tiny_owlv2, query_image,
                                                     nms_threshold=nms_threshold))
        adapter.setup(torch.device("cpu"))
        counts.append(sum(len(r["detections"]) for r in adapter(_inputs(images))))
    assert counts[0] < counts[1]


def test_the_query_image_is_embedded_once(tiny_owlv2, images, query_image, monkeypatch):
    adapter = Owlv2ExampleDetector(_example_spec(tiny_owlv2, query_image))
    adapter.setup(torch.device("cpu"))
    calls = []
    original = adapter.model.embed_image_query
    monkeypatch.setattr(adapter.model, "embed_image_query",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    adapter(_inputs(images))
    adapter(_inputs(images[:2]))
    assert calls == []
    assert adapter.parameters()["query_image"] == str(query_image)


@pytest.mark.parametrize("kwargs, message", [
    ({"query_image": "/nonexistent/mug.png"}, "is not a file"),
    ({"prompt": "a mug"}, "not a prompt"),
    ({"labels": ["mug"]}, "takes no labels"),
])
def test_example_check_spec_errors(tiny_owlv2, query_image, kwargs, message):
    kwargs.setdefault("query_image", query_image)
    with pytest.raises(ValueError, match=message):
        _example_spec(tiny_owlv2, **kwargs)


def test_an_s3_query_image_passes_check_spec(tiny_owlv2):
    """Checked when setup reads it (no network before Ray starts)."""
    spec = _example_spec(tiny_owlv2, "s3://bucket/queries/red_mug.jpg")
    assert spec.query_image == "s3://bucket/queries/red_mug.jpg"


# ------------------------------------------------------------------ CPU-stage preprocessing


@pytest.mark.parametrize("preprocess", ["processor", "fast"])
def test_both_tasks_run_the_cpu_stage_split(tiny_owlv2, images, query_image, preprocess):
    """As the actor runs them: cpu_transform per image in the decode stage, then preprocess
    with the equal-shaped rows `stacked`; GPU actors (num_gpus > 0, run here on the CPU)
    finish preprocessing on their device. Every way gives the adapter's own numbers."""
    specs = [lambda **kw: _ground_spec(tiny_owlv2, **kw),
             lambda **kw: _example_spec(tiny_owlv2, query_image, **kw)]
    classes = [Owlv2Grounder, Owlv2ExampleDetector]
    rows = _inputs(images, ROW_PROMPTS)
    for make_spec, cls in zip(specs, classes):
        runs = []
        for num_gpus in (0, 1):
            adapter = cls(make_spec(preprocess=preprocess, resources={"num_gpus": num_gpus}))
            adapter.setup(torch.device("cpu"))
            runs.append(adapter(rows))
            transformed = [adapter.cpu_transform(im.pixels) for im in rows]
            if transformed[0] is not None:  # equal shapes: the actor hands one stacked array
                rows_t = [ImageInput(t, im.width, im.height, im.prompt)
                          for t, im in zip(transformed, rows)]
                with torch.inference_mode():
                    raw = adapter.predict(adapter.preprocess(rows_t, np.stack(transformed)))
                    assert adapter.postprocess(raw, rows) == runs[-1]
        for on_cpu, on_gpu in zip(*runs):
            assert [d["label"] for d in on_cpu["detections"]] == \
                [d["label"] for d in on_gpu["detections"]]
            for a, b in zip(on_cpu["detections"], on_gpu["detections"]):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
                assert a["x1"] == pytest.approx(b["x1"], abs=1e-3)
        assert any(r["detections"] for r in runs[0])
