"""How much a row is worth a human's look, from its boxes (`labeler select`), each with a
reason a reviewer can read.

    uncertainty   one task: the binary entropy, in bits, of its least certain box's score:
                  1.0 for a box scored 0.5 (the model cannot tell), near 0 for scores near 0
                  or 1; 0 for a row without boxes. Least-confidence sampling, per box.
    disagreement  several tasks: their boxes clustered as `labeler fuse` clusters them
                  (weighted boxes fusion; the cluster's score is its best box's), and for each
                  cluster some tasks missed, its score times the share of tasks that missed
                  it; the row's is the largest. 0 when every task found every object the
                  others did. Query by committee, the committee being the tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from labeler.fusion.wbf import FusionRule, fuse_boxes


@dataclass(frozen=True)
class Priority:
    """A row's worth of review in [0, 1] and why."""

    score: float
    reason: str


NOTHING = Priority(0.0, "no box")


def entropy_bits(score: float) -> float:
    """Binary entropy of a probability, in bits: 1 at 0.5, 0 at 0 and 1."""
    if score <= 0.0 or score >= 1.0:
        return 0.0
    return -(score * math.log2(score) + (1 - score) * math.log2(1 - score))


def uncertainty(boxes: Sequence[tuple[str, float]]) -> Priority:
    """A row's (label, score) boxes -> the entropy of its least certain one."""
    if not boxes:
        return NOTHING
    label, score = max(boxes, key=lambda box: entropy_bits(box[1]))
    return Priority(entropy_bits(score), f"{label!r} scored {score:.3f}")


def disagreement(per_task: Sequence[Sequence[dict]], width: float, height: float,
                 names: Sequence[str], iou: float) -> Priority:
    """A row's boxes from each task ({label, score, x0, y0, x1, y1} dicts) -> its largest
    disagreement (module docstring); names: the tasks', for the reason."""
    rule = FusionRule(weights=(1.0,) * len(per_task), iou=iou, conf_type="max")
    best = NOTHING
    for box in fuse_boxes(per_task, width, height, rule, support=True):
        missed = len(per_task) - len(box["models"])
        value = box["score"] * missed / len(per_task)
        if value > best.score:
            found = ", ".join(names[k] for k in box["models"])
            best = Priority(value, f"{box['label']!r} scored {box['score']:.3f} by {found}, "
                                   f"missed by {missed} of {len(per_task)} tasks")
    if best is NOTHING and any(per_task):
        return Priority(0.0, "every task found the same objects")
    return best
