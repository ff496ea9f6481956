"""How much a row is worth a human's look, from its boxes (`labeler select`), each with a
reason a reviewer can read. Both are shares in [0, 1], so a row's number of boxes does not
decide its rank by itself.

    uncertainty   one task: 1 - the mean score of its boxes (least-confidence sampling,
                  averaged over the row's detections). A detector scores lower where it errs
                  more; a row without boxes scores 0.
    disagreement  several tasks: their boxes clustered as `labeler fuse` clusters them
                  (weighted boxes fusion), one cluster per object some task found; the mean
                  over the objects of the tasks that missed it / (tasks - 1): 1 for an object
                  only one task found, 0 for one every task found (with two tasks: the share
                  of objects only one found). Query by committee, the committee being the
                  tasks.

benchmarks/select_review.py measures what each finds against a random sample (and why these
and not sums of box scores: a hard image's boxes are few and low-scored, so sums rank it low).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labeler.fusion.wbf import FusionRule, fuse_boxes


@dataclass(frozen=True)
class Priority:
    """A row's worth of review in [0, 1] (higher first) and why."""

    score: float
    reason: str


NOTHING = Priority(0.0, "no box")


def uncertainty(boxes: Sequence[tuple[str, float]]) -> Priority:
    """A row's (label, score) boxes -> 1 - their mean score, naming the least sure box."""
    if not boxes:
        return NOTHING
    mean = sum(score for _, score in boxes) / len(boxes)
    label, score = min(boxes, key=lambda box: box[1])
    return Priority(1.0 - mean, f"mean box score {mean:.3f} over {_count(len(boxes), 'box')}; "
                                f"the least sure {label!r} scored {score:.3f}")


def disagreement(per_task: Sequence[Sequence[dict]], width: float | None, height: float | None,
                 names: Sequence[str], iou: float) -> Priority:
    """A row's boxes from each task ({label, score, x0, y0, x1, y1} dicts), two tasks or
    more -> the mean over its objects of the tasks that missed each / (tasks - 1) (module
    docstring); names: the tasks', for the reason."""
    rule = FusionRule(weights=(1.0,) * len(per_task), iou=iou, conf_type="max")
    objects = fuse_boxes(per_task, width, height, rule, support=True)
    if not objects:
        return NOTHING
    missed = [len(per_task) - len(box["models"]) for box in objects]
    disputed = [(box, m) for box, m in zip(objects, missed) if m]
    if not disputed:
        return Priority(0.0, f"every task found the same {_count(len(objects), 'object')}")
    box, m = max(disputed, key=lambda d: d[0]["score"])
    found = ", ".join(names[k] for k in box["models"])
    # At most tasks - 1 miss an object (one found it): that many make it a full dispute.
    return Priority(sum(missed) / (len(objects) * (len(per_task) - 1)),
                    f"{len(disputed)} of {len(objects)} objects in dispute; the surest "
                    f"{box['label']!r} scored {box['score']:.3f} by {found}, missed by {m} of "
                    f"{len(per_task)} tasks")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('x') else 's'}"
