"""Weighted boxes fusion (labeler.fusion.wbf) against the authors' implementation,
`ensemble_boxes.weighted_boxes_fusion`, on random images, and on cases worked by hand."""

from __future__ import annotations

import importlib.util
import os
import random

import numpy as np
import pytest

from labeler.fusion.wbf import FusionCount, FusionRule, fuse_boxes


def _reference_module():
    """ensemble_boxes' numpy-only WBF module, loaded from its file: the package's __init__
    imports modules that need numba, which the tests do not install (scripts/setup.sh)."""
    found = importlib.util.find_spec("ensemble_boxes")
    path = os.path.join(found.submodule_search_locations[0], "ensemble_boxes_wbf.py")
    spec = importlib.util.spec_from_file_location("ensemble_boxes_wbf_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE = _reference_module()
LABELS = ["cat", "dog", "car"]


def _random_image(rng: random.Random, models: int, width: int, height: int) -> list[list[dict]]:
    """Each model's boxes: noisy copies of a few objects (so boxes cluster), some missed,
    some spurious, a few past the image's edge or of no area."""
    objects = []
    for _ in range(rng.randint(0, 6)):
        x0, y0 = rng.uniform(0, width * 0.8), rng.uniform(0, height * 0.8)
        objects.append((rng.choice(LABELS), x0, y0, x0 + rng.uniform(5, width * 0.3),
                        y0 + rng.uniform(5, height * 0.3)))
    per_model = []
    for _ in range(models):
        boxes = []
        for label, x0, y0, x1, y1 in objects:
            for _ in range(rng.choice([0, 1, 1, 2])):
                jitter = [rng.gauss(0, 0.06 * (x1 - x0)) for _ in range(4)]
                boxes.append({"label": label, "score": rng.uniform(0.01, 1.0),
                              "x0": x0 + jitter[0], "y0": y0 + jitter[1],
                              "x1": x1 + jitter[2], "y1": y1 + jitter[3]})
        for _ in range(rng.randint(0, 3)):  # spurious, some past the edges
            x0, y0 = rng.uniform(-20, width), rng.uniform(-20, height)
            boxes.append({"label": rng.choice(LABELS), "score": rng.uniform(0.01, 1.0),
                          "x0": x0, "y0": y0, "x1": x0 + rng.uniform(1, 200),
                          "y1": y0 + rng.uniform(1, 200)})
        if rng.random() < 0.2:  # a sliver of no area
            boxes.append({"label": "cat", "score": 0.9, "x0": 10.0, "y0": 10.0, "x1": 10.0,
                          "y1": 50.0})
        rng.shuffle(boxes)
        per_model.append(boxes)
    return per_model


def _reference(per_model, width, height, rule: FusionRule) -> list[tuple]:
    ids = {label: k for k, label in enumerate(LABELS)}
    boxes, scores, labels = REFERENCE.weighted_boxes_fusion(
        [[[b["x0"] / width, b["y0"] / height, b["x1"] / width, b["y1"] / height] for b in bs]
         for bs in per_model],
        [[b["score"] for b in bs] for bs in per_model],
        [[ids[b["label"]] for b in bs] for bs in per_model],
        weights=list(rule.weights), iou_thr=rule.iou, skip_box_thr=rule.min_score,
        conf_type=rule.conf_type)
    return [(LABELS[int(label)], float(score), *(np.asarray(box) * np.array([width, height] * 2)))
            for box, score, label in zip(boxes, scores, labels)]


@pytest.mark.filterwarnings("ignore::UserWarning")  # the reference warns of every clipped box
@pytest.mark.parametrize("seed", range(60))
def test_fused_boxes_equal_the_reference_implementations(seed):
    rng = random.Random(seed)
    models = rng.randint(2, 4)
    width, height = rng.choice([(640, 480), (1920, 1080), (300, 900)])
    rule = FusionRule(weights=tuple(rng.choice([1.0, 1.0, 0.5, 2.0, 3.0]) for _ in range(models)),
                      iou=rng.choice([0.4, 0.55, 0.7]), min_score=rng.choice([0.0, 0.0, 0.2]),
                      conf_type=rng.choice(["avg", "avg", "max"]))
    per_model = _random_image(rng, models, width, height)

    ours = fuse_boxes(per_model, width, height, rule)
    expected = _reference(per_model, width, height, rule)
    assert [d["label"] for d in ours] == [e[0] for e in expected]
    for d, e in zip(ours, expected):
        assert d["score"] == pytest.approx(e[1], abs=1e-6)
        # The reference sums corners in float32: a few millionths of the image's size.
        assert [d["x0"], d["y0"], d["x1"], d["y1"]] == pytest.approx(e[2:], abs=1e-5 * width)


def _box(label, score, x0, y0, x1, y1):
    return {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def test_a_box_found_by_every_model_keeps_the_mean_score_one_found_alone_loses_its_share():
    a = [_box("cat", 0.8, 100, 100, 200, 200), _box("dog", 0.6, 300, 300, 400, 400)]
    b = [_box("cat", 0.4, 110, 100, 210, 200)]
    fused = fuse_boxes([a, b], 640, 480, FusionRule(weights=(1.0, 1.0)))
    assert [d["label"] for d in fused] == ["cat", "dog"]
    cat, dog = fused
    assert cat["score"] == pytest.approx(0.6)  # (0.8 + 0.4) / 2 boxes * min(2, 2) / 2 models
    # Corners weighted by score: x0 = (0.8 * 100 + 0.4 * 110) / 1.2.
    assert [cat["x0"], cat["y0"], cat["x1"], cat["y1"]] == pytest.approx(
        [(80 + 44) / 1.2, 100, (160 + 84) / 1.2, 200])
    assert dog["score"] == pytest.approx(0.3)  # found by one of two models
    assert (dog["x0"], dog["y1"]) == (300, 400)


def test_weights_min_models_and_max_conf():
    a = [_box("cat", 0.8, 100, 100, 200, 200), _box("dog", 0.6, 300, 300, 400, 400)]
    b = [_box("cat", 0.4, 100, 100, 200, 200)]
    weighted = fuse_boxes([a, b], 640, 480, FusionRule(weights=(2.0, 1.0)))
    assert weighted[0]["score"] == pytest.approx((2 * 0.8 + 0.4) / 3)
    assert weighted[1]["score"] == pytest.approx(2 * 0.6 / 3)

    count = FusionCount()
    agreed = fuse_boxes([a, b], 640, 480, FusionRule(weights=(1.0, 1.0), min_models=2), count)
    assert [d["label"] for d in agreed] == ["cat"]
    assert (count.boxes_in, count.too_few_models, count.boxes_out) == ([2, 1], 1, 1)

    best = fuse_boxes([a, b], 640, 480, FusionRule(weights=(1.0, 1.0), conf_type="max"))
    assert [d["score"] for d in best] == pytest.approx([0.8, 0.6])


def test_two_boxes_of_one_model_in_a_cluster_do_not_count_as_two_models():
    a = [_box("cat", 0.9, 100, 100, 200, 200), _box("cat", 0.7, 102, 100, 202, 200)]
    count = FusionCount()
    fused = fuse_boxes([a, []], 640, 480, FusionRule(weights=(1.0, 1.0), min_models=2), count)
    assert fused == [] and count.too_few_models == 1


def test_labels_never_fuse_across_and_the_iou_must_be_exceeded():
    a = [_box("cat", 0.9, 0, 0, 100, 100)]
    b = [_box("dog", 0.9, 0, 0, 100, 100), _box("cat", 0.5, 50, 0, 150, 100)]  # IoU 1/3
    assert len(fuse_boxes([a, b], 640, 480, FusionRule(weights=(1, 1), iou=1 / 3))) == 3
    assert len(fuse_boxes([a, b], 640, 480, FusionRule(weights=(1, 1), iou=0.33))) == 2


def test_boxes_are_clipped_to_the_image_and_dropped_under_min_score_or_without_area():
    a = [_box("cat", 0.9, -50, -10, 100, 500), _box("cat", 0.05, 0, 0, 10, 10),
         _box("cat", 0.9, 30, 30, 30, 90)]
    count = FusionCount()
    fused = fuse_boxes([a, []], 640, 480, FusionRule(weights=(1, 1), min_score=0.1), count)
    assert [(d["x0"], d["y0"], d["x1"], d["y1"]) for d in fused] == [(0, 0, 100, 480)]
    assert (count.under_min_score, count.no_area, count.boxes_out) == (1, 1, 1)


def test_labels_differing_only_in_case_or_spaces_are_one_label_in_the_first_spelling():
    """One model's `Dog` and another's `dog` are one object (as eval matches names), not two
    boxes each scored as found by half the models."""
    a = [_box("Dog", 0.8, 0, 0, 100, 100)]
    b = [_box("dog ", 0.6, 0, 0, 100, 100), _box("Traffic  light", 0.5, 200, 0, 300, 100)]
    c = [_box("traffic light", 0.7, 200, 0, 300, 100)]
    fused = fuse_boxes([a, b, c], 640, 480, FusionRule(weights=(1, 1, 1)))
    assert [(d["label"], round(d["score"], 6)) for d in fused] == [
        ("Dog", round((0.8 + 0.6) / 2 * 2 / 3, 6)),
        ("Traffic  light", round((0.5 + 0.7) / 2 * 2 / 3, 6))]


def test_boxes_of_equal_score_are_taken_in_task_order():
    """Three boxes of one score, where the order decides the clusters: task a's box first
    starts a cluster that c joins (IoU 7/13 with either), b's overlaps a's by 1/4 only."""
    a, b, c = (_box("cat", 0.5, 0, 0, 10, 10), _box("cat", 0.5, 6, 0, 16, 10),
               _box("cat", 0.5, 3, 0, 13, 10))
    fused = fuse_boxes([[a], [b, c]], 640, 480, FusionRule(weights=(1, 1), iou=0.4))
    assert sorted((d["x0"], d["x1"]) for d in fused) == [(1.5, 11.5), (6, 16)]
    # Taken c, b, a instead, b would join c's cluster and a be left alone.
    reversed_ = fuse_boxes([[c, b], [a]], 640, 480, FusionRule(weights=(1, 1), iou=0.4))
    assert sorted((d["x0"], d["x1"]) for d in reversed_) == [(0, 10), (4.5, 14.5)]


def test_an_avg_score_passes_one_as_the_references_does_when_weights_differ():
    """Documented in docs/fuse.md: two boxes of the task weighted 3 in one cluster score
    (2.7 + 2.7) / 2 * min(2 tasks, 2 boxes) / 4 = 1.35."""
    a = [_box("cat", 0.9, 0, 0, 100, 100), _box("cat", 0.9, 5, 0, 105, 100)]
    rule = FusionRule(weights=(3.0, 1.0))
    assert [d["score"] for d in fuse_boxes([a, []], 640, 480, rule)] == pytest.approx([1.35])
    assert _reference([a, []], 640, 480, rule)[0][1] == pytest.approx(1.35)
