"""Tiled OWLv2 (spec.tiles) vs the documented single-image usage run on each window.

The reference for a tiled image: the documented processor -> model -> post-processing on
the pixels of each window (the whole image, then each tile) as an image of its own, its
boxes clipped to that window and moved to the window's place, then merge_windows. The
adapter batches every window of every image into one forward pass."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Owlv2ForObjectDetection, Owlv2Processor

from labeler.config import TaskSpec, TilingSpec
from labeler.models.base import ImageInput
from labeler.models.owlv2 import Owlv2Detector, Owlv2ExampleDetector, Owlv2Grounder
from labeler.models.tiling import merge_windows, tile_windows
from labeler.testing.samples import synthetic_image
from test_owlv2_detector import LABELS, THRESHOLD, reference_detections
from test_owlv2_ground_and_example import reference_example, reference_grounding

# Wide, tall and odd sizes: tiles of different shapes, each padded to its own square.
SIZES = [(300, 211), (80, 200), (47, 33)]
TILES = {"grid": [2, 2], "overlap": 0.25}


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_image(w, h, seed=10 + i)) for i, (w, h) in enumerate(SIZES)]


def _inputs(images, prompts=None):
    prompts = prompts or [None] * len(images)
    return [ImageInput(im, im.shape[1], im.shape[0], prompt=p) for im, p in zip(images, prompts)]


def tiled_reference(image: np.ndarray, tiles: dict, reference_on) -> list[dict]:
    """reference_on(window pixels) -> its documented detections; moved into the image."""
    tiling = TilingSpec(**tiles)
    per_window = []
    for x0, y0, x1, y1 in tile_windows(image.shape[1], image.shape[0], tiling):
        dets = reference_on(np.ascontiguousarray(image[y0:y1, x0:x1]))
        per_window.append([{**d, "x0": d["x0"] + x0, "y0": d["y0"] + y0,
                            "x1": d["x1"] + x0, "y1": d["y1"] + y0} for d in dets])
    return merge_windows(per_window, tiling.merge_threshold)


def _assert_same(ours: list[dict], ref: list[dict]):
    # Saturated scores of the tiny model tie (1.0): compare in a tie-free order.
    def key(d):
        return (d["label"], round(d["score"], 3), round(d["x0"], 2), round(d["y0"], 2),
                round(d["x1"], 2), round(d["y1"], 2))
    ours, ref = sorted(ours, key=key), sorted(ref, key=key)
    assert [d["label"] for d in ours] == [d["label"] for d in ref]
    for got, want in zip(ours, ref):
        for k in ("score", "x0", "y0", "x1", "y1"):
            assert got[k] == pytest.approx(want[k], abs=1e-4), k


@pytest.mark.parametrize("tiles", [TILES, {"grid": [3, 1], "overlap": 0.0, "full_image": False}])
def test_tiled_detection_equals_the_documented_usage_on_each_window(tiny_owlv2, images, tiles):
    spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                    labels=LABELS, threshold=THRESHOLD, tiles=tiles)
    adapter = Owlv2Detector(spec)
    adapter.setup(torch.device("cpu"))
    out = adapter(_inputs(images))
    assert len(out) == len(images)
    for image, result in zip(images, out):
        ref = tiled_reference(image, tiles, lambda px: reference_detections(tiny_owlv2, px))
        assert len(ref) > 0
        _assert_same(result["detections"], ref)
        scores = [d["score"] for d in result["detections"]]
        assert scores == sorted(scores, reverse=True)
        h, w = image.shape[:2]
        for d in result["detections"]:
            assert 0 <= d["x0"] <= d["x1"] <= w and 0 <= d["y0"] <= d["y1"] <= h


def test_tiles_find_what_the_whole_image_alone_does_not(tiny_owlv2, images):
    """Tiling adds boxes: the whole-image pass's boxes are among the candidates, so the
    tiled result has at least as many boxes after merging, and the tiles bring new ones."""
    def detector(tiles):
        spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                        labels=LABELS, threshold=THRESHOLD, tiles=tiles)
        adapter = Owlv2Detector(spec)
        adapter.setup(torch.device("cpu"))
        return adapter
    plain, tiled = detector(None)(_inputs(images)), detector(TILES)(_inputs(images))
    for a, b in zip(plain, tiled):
        boxes = {(d["label"], round(d["x0"], 3), round(d["y0"], 3)) for d in b["detections"]}
        assert len(b["detections"]) > len(a["detections"])
        assert len(boxes - {(d["label"], round(d["x0"], 3), round(d["y0"], 3))
                            for d in a["detections"]}) > 0


@pytest.mark.parametrize("preprocess", ["processor", "fast"])
def test_gpu_actor_split_gives_the_cpu_actor_numbers_when_tiled(tiny_owlv2, images, preprocess):
    """GPU actors cut the windows themselves in processor mode (the decode stage hands over
    the image); the CPU stage cuts them otherwise. Both give the same boxes."""
    results = []
    for num_gpus in (0, 1):
        spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                        labels=LABELS, threshold=THRESHOLD, tiles=TILES, preprocess=preprocess,
                        resources={"num_gpus": num_gpus})
        adapter = Owlv2Detector(spec)
        adapter.setup(torch.device("cpu"))
        transformed = adapter.cpu_transform(images[0])
        if num_gpus == 1 and preprocess == "processor":
            assert transformed is None
        else:
            assert transformed.shape == (5, 3, 96, 96)
        results.append(adapter(_inputs(images)))
    for on_cpu, on_gpu in zip(*results):
        _assert_same(on_cpu["detections"], on_gpu["detections"])


def test_tiled_grounding_equals_the_documented_usage_on_each_window(tiny_owlv2, images):
    prompts = ["a photo of a cat, a dog", None, "car, a red car"]
    spec = TaskSpec(task="ground", model={"family": "owlv2", "source": tiny_owlv2},
                    prompt="a dog, car", threshold=THRESHOLD, tiles=TILES)
    adapter = Owlv2Grounder(spec)
    adapter.setup(torch.device("cpu"))
    reference = (Owlv2Processor.from_pretrained(tiny_owlv2),
                 Owlv2ForObjectDetection.from_pretrained(tiny_owlv2).eval())
    out = adapter(_inputs(images, prompts))
    for image, prompt, result in zip(images, prompts, out):
        queries = [q.strip() for q in (prompt or "a dog, car").split(",")]
        assert result["prompt"] == ", ".join(queries)
        ref = tiled_reference(image, TILES,
                              lambda px: reference_grounding(reference, px, queries))
        assert len(ref) > 0
        _assert_same(result["detections"], ref)


def test_tiled_example_detection_equals_the_documented_usage_on_each_window(
        tiny_owlv2, images, tmp_path):
    query_path = tmp_path / "red_mug.png"
    synthetic_image(64, 80, seed=7).save(query_path)
    # nms_threshold 1.0: no suppression. The tiny model's scores saturate at 1.0, and which
    # of two tied overlapping boxes NMS keeps depends on the sort (a tile of this test ties).
    spec = TaskSpec(task="detect-by-example", model={"family": "owlv2", "source": tiny_owlv2},
                    query_image=str(query_path), threshold=THRESHOLD, nms_threshold=1.0,
                    tiles=TILES)
    adapter = Owlv2ExampleDetector(spec)
    adapter.setup(torch.device("cpu"))
    reference = (Owlv2Processor.from_pretrained(tiny_owlv2),
                 Owlv2ForObjectDetection.from_pretrained(tiny_owlv2).eval())
    query = Image.open(query_path)
    out = adapter(_inputs(images))
    for image, result in zip(images, out):
        ref = tiled_reference(image, TILES, lambda px: [
            {k: v for k, v in d.items() if k != "alpha"}
            for d in reference_example(reference, px, query, THRESHOLD, 1.0)])
        assert len(ref) > 0
        _assert_same(result["detections"], ref)


def test_tiles_are_stored_in_the_rows_parameters(tiny_owlv2):
    import json

    spec = TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                    labels=["cat"], tiles=TILES)
    params = json.loads(Owlv2Detector(spec).parameters_json())
    assert params["tiles"] == {"grid": [2, 2], "overlap": 0.25, "full_image": True,
                               "merge_threshold": 0.5}
    untiled = Owlv2Detector(spec.model_copy(update={"tiles": None}))
    assert "tiles" not in json.loads(untiled.parameters_json())
