"""`nms` and `max_detections` on a task's boxes: which boxes drop, for canned boxes with
known overlaps and scores."""

import pytest

from labeler.config import TaskSpec
from labeler.models.base import best_boxes, suppress_overlaps


def _box(label, score, x0, y0, x1, y1):
    return {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


# IoU(a, b) = 80 / 120 = 0.667; IoU(a, c) = 0; d is b's twin under another label.
A = _box("car", 0.9, 0, 0, 10, 10)
B = _box("car", 0.8, 2, 0, 12, 10)
C = _box("car", 0.7, 50, 50, 60, 60)
D = _box("truck", 0.95, 2, 0, 12, 10)


def test_a_box_overlapping_a_higher_scored_one_of_its_label_drops():
    assert suppress_overlaps([C, B, A], 0.5, per_label=True) == [C, A]  # order kept
    assert suppress_overlaps([A, B, C], 0.7, per_label=True) == [A, B, C]  # 0.667 <= 0.7


def test_per_label_keeps_other_labels_and_all_does_not():
    assert suppress_overlaps([A, B, D], 0.5, per_label=True) == [A, D]
    # Across labels, the truck box (0.95) suppresses the identical car box and, at 0.667,
    # the car box A as well.
    assert suppress_overlaps([A, B, D], 0.5, per_label=False) == [D]


def test_suppression_is_greedy_from_the_best_box():
    """B overlaps both A (0.667) and E (0.667); A and E do not overlap: B, the middle one,
    goes, and E stays because the only box over it is gone."""
    e = _box("car", 0.6, 4, 0, 14, 10)  # IoU(A, e) = 60 / 140 = 0.43
    assert suppress_overlaps([A, B, e], 0.5, per_label=True) == [A, e]


def test_nothing_to_compare():
    assert suppress_overlaps([], 0.3, per_label=True) == []
    assert suppress_overlaps([A], 0.3, per_label=False) == [A]


@pytest.mark.parametrize("task, family, kw", [
    ("caption", "florence2", {}),
    ("detect-by-example", "owlv2", {"query_image": "cat.jpg"}),
    ("pseudo-label", "owlv2", {"pseudo_label": {"vocabulary": ["cat"]}}),
])
def test_nms_is_refused_where_it_does_not_apply(task, family, kw):
    with pytest.raises(ValueError, match="nms applies to tasks detect, ground, regions"):
        TaskSpec(task=task, model={"family": family, "source": "m"}, nms="all", **kw)


def test_max_detections_keeps_the_best_boxes_in_their_order():
    tie = _box("car", 0.9, 5, 5, 6, 6)
    assert best_boxes([C, A, B, D], 2) == [A, D]
    assert best_boxes([C, A, tie, B], 2) == [A, tie]  # a tie: the earlier box
    assert best_boxes([C, A], 5) == [C, A] and best_boxes([C, A], None) == [C, A]


def test_max_detections_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="max_detections applies to tasks detect, ground"):
        TaskSpec(task="caption", model={"family": "florence2", "source": "m"}, max_detections=5)
