"""How `labeler select` scores a row (labeler.selection.scores) and keeps one entry per input
(a video's frames are one)."""

from __future__ import annotations

import pytest

from labeler.selection.run import Selected, SelectOptions, SelectSummary, _per_input
from labeler.selection.scores import disagreement, uncertainty


def _box(label, score, x0=10.0, y0=10.0, x1=60.0, y1=60.0):
    return {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def test_uncertainty_is_one_minus_the_mean_box_score_naming_the_least_sure_box():
    priority = uncertainty([("cat", 0.95), ("dog", 0.45), ("car", 0.2)])
    assert priority.score == pytest.approx(1 - (0.95 + 0.45 + 0.2) / 3)
    assert priority.reason == ("mean box score 0.533 over 3 boxes; the least sure 'car' scored "
                               "0.200")
    assert uncertainty([]).score == 0.0 and uncertainty([]).reason == "no box"
    assert uncertainty([("cat", 0.4)]).reason.startswith("mean box score 0.400 over 1 box;")
    # The share, not the count: more boxes of the same scores rank the same.
    assert uncertainty([("cat", 0.4)] * 5).score == pytest.approx(uncertainty([("cat", 0.4)]).score)


def test_disagreement_is_the_mean_over_objects_of_the_tasks_that_missed_each_of_all_but_one():
    names = ["a", "b", "c"]
    agreed = [_box("cat", 0.9), _box("cat", 0.7, x0=12.0), _box("cat", 0.8, y1=58.0)]
    priority = disagreement([[agreed[0]], [agreed[1]], [agreed[2]]], 640, 480, names, 0.55)
    assert (priority.score, priority.reason) == (0.0, "every task found the same 1 object")

    lone = _box("dog", 0.8, 300.0, 300.0, 400.0, 400.0)
    half = _box("car", 0.6, 100.0, 300.0, 200.0, 400.0)
    priority = disagreement([[agreed[0], lone, half], [agreed[1], half], [agreed[2]]],
                            640, 480, names, 0.55)
    assert priority.score == pytest.approx((0 / 2 + 2 / 2 + 1 / 2) / 3)  # cat, dog, car
    assert priority.reason == ("2 of 3 objects in dispute; the surest 'dog' scored 0.800 by a, "
                               "missed by 2 of 3 tasks")

    # The same place under two labels is two objects, each missed by the other task: with two
    # tasks, the score is the share of objects only one found.
    priority = disagreement([[_box("cat", 0.9)], [_box("dog", 0.7)]], 640, 480, ["a", "b"], 0.5)
    assert priority.score == pytest.approx(1.0)
    priority = disagreement([[_box("cat", 0.9), lone], [_box("cat", 0.8)]], 640, 480,
                            ["a", "b"], 0.5)
    assert priority.score == pytest.approx(0.5)
    assert disagreement([[], []], 640, 480, ["a", "b"], 0.5).reason == "no box"


def test_a_videos_frames_are_one_input_scored_by_its_best_frame():
    summary = SelectSummary(SelectOptions(("out",)), ["t"], finished=True)
    scored = [Selected("a.mp4", 0.2, "frame 0"), Selected("a.mp4", 0.7, "frame 2"),
              Selected("a.mp4", 0.5, "frame 4"), Selected("b.jpg", 0.1, "x"),
              Selected("c.mp4", 0.3, "frame 0")]
    assert list(_per_input(scored, summary)) == [
        Selected("a.mp4", 0.7, "frame 2"), Selected("b.jpg", 0.1, "x"),
        Selected("c.mp4", 0.3, "frame 0")]
    assert summary.inputs == 3


def test_iou_is_refused_by_uncertainty_and_defaults_by_disagreement():
    from labeler.selection.run import DEFAULT_IOU, SelectError, _check_options
    with pytest.raises(SelectError, match="--iou is where --by disagreement clusters"):
        _check_options(SelectOptions(outputs=("o",), iou=0.3))
    assert SelectOptions(outputs=("o",), by="disagreement").cluster_iou == DEFAULT_IOU == 0.55
    _check_options(SelectOptions(outputs=("o",), by="disagreement", iou=0.3))
