"""Weighted boxes fusion (Solovyev, Wang and Gabruseva, "Weighted boxes fusion: ensembling
boxes from different object detection models", 2019): one image's boxes from several models
become one set of boxes, each the score-weighted mean of a cluster of boxes that overlap.

The rules are those of the authors' `ensemble_boxes.weighted_boxes_fusion` (the tests check
this function against it on random boxes), in pixels instead of [0, 1] coordinates (IoU and
weighted means do not depend on the scale):

    1. a model's boxes scoring under `min_score` are dropped; the others are clipped to the
       image, their corners put in order (x0 <= x1, y0 <= y1), those left with no area
       dropped, and their scores multiplied by the model's weight;
    2. per label (labels compared as labeler.schemas.labels.label_key compares them: `Dog`
       and `dog` are one label, written as `spellings` gives it, else as the first model's
       box spells it), boxes in order
       of weighted score, highest first, each joins the cluster
       whose fused box it overlaps most, when that IoU is over `iou`, or starts a new one;
       a cluster's fused box is the mean of its boxes' corners weighted by their scores,
       recomputed as each box joins;
    3. a cluster's score: "avg", its boxes' mean weighted score times
       min(models, boxes in it) / sum of the weights, so a box only some models found
       scores less than one all found; "max", its best weighted score / the largest weight.

Added here: `min_models` drops clusters found by fewer distinct models (consensus voting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from labeler.schemas.labels import label_key

ConfType = Literal["avg", "max"]


@dataclass(frozen=True)
class FusionRule:
    """How boxes are fused. weights: one per model, > 0; iou: a box joins a cluster whose
    fused box it overlaps by more than this; min_score: a model's boxes under it are dropped
    before fusing; min_models: fewest distinct models in a kept cluster."""

    weights: tuple[float, ...]
    iou: float = 0.55
    min_score: float = 0.0
    conf_type: ConfType = "avg"
    min_models: int = 1


@dataclass
class FusionCount:
    """What fusing some images did to their boxes: read per model, dropped under min_score,
    dropped for having no area, clusters dropped for too few models, fused boxes written,
    and boxes renamed per `rename` entry (FusionSpec.rename)."""

    boxes_in: list[int] = field(default_factory=list)
    under_min_score: int = 0
    no_area: int = 0
    too_few_models: int = 0
    boxes_out: int = 0
    renamed: dict[str, int] = field(default_factory=dict)  # a rename's label -> boxes renamed

    def add(self, other: FusionCount) -> None:
        if not self.boxes_in:
            self.boxes_in = [0] * len(other.boxes_in)
        self.boxes_in = [a + b for a, b in zip(self.boxes_in, other.boxes_in)]
        self.under_min_score += other.under_min_score
        self.no_area += other.no_area
        self.too_few_models += other.too_few_models
        self.boxes_out += other.boxes_out
        for label, boxes in other.renamed.items():
            self.renamed[label] = self.renamed.get(label, 0) + boxes


# A box in a cluster: weighted score, model's weight, model index, x0, y0, x1, y1.
_Member = tuple[float, float, int, float, float, float, float]


def fuse_boxes(per_model: Sequence[Sequence[dict]], width: float | None,
               height: float | None,
               rule: FusionRule, count: FusionCount | None = None,
               support: bool = False, spellings: dict[str, str] | None = None) -> list[dict]:
    """One image's boxes, per model ({label, score, x0, y0, x1, y1} dicts, pixels), fused
    (module docstring) into {label, score, x0, y0, x1, y1} dicts, highest score first.
    width, height: the image's size in pixels, which boxes are clipped to (None: not
    known, no clipping on that side). support: each
    fused box also has `models`, the sorted indices of the models whose boxes it fuses.
    spellings: label_key -> the label a fused box of that key is written as (the models'
    label lists); a label not in it is written as its first box, in model order, spells it."""
    count = count if count is not None else FusionCount()
    width = float("inf") if width is None else width
    height = float("inf") if height is None else height
    if not count.boxes_in:
        count.boxes_in = [0] * len(per_model)
    by_label: dict[str, list[_Member]] = {}  # label_key -> boxes
    spelling = dict(spellings or {})  # label_key -> the label as listed, or as first seen
    keys: dict[str, str] = {}  # label -> label_key
    for model, (boxes, weight) in enumerate(zip(per_model, rule.weights, strict=True)):
        count.boxes_in[model] += len(boxes)
        for box in boxes:
            score = box["score"]
            if score < rule.min_score:
                count.under_min_score += 1
                continue
            # Clipped to the image, corners in order (inline: this loop is the hot path).
            x0, x1 = min(max(box["x0"], 0.0), width), min(max(box["x1"], 0.0), width)
            y0, y1 = min(max(box["y0"], 0.0), height), min(max(box["y1"], 0.0), height)
            if x1 < x0:
                x0, x1 = x1, x0
            if y1 < y0:
                y0, y1 = y1, y0
            if x1 <= x0 or y1 <= y0:
                count.no_area += 1
                continue
            key = keys.get(box["label"])
            if key is None:  # label_key once per distinct label: this loop is the hot path
                key = keys[box["label"]] = label_key(box["label"])
                spelling.setdefault(key, box["label"])
            by_label.setdefault(key, []).append((score * weight, weight, model, x0, y0, x1, y1))
    fused = []
    for key, members in by_label.items():
        label = spelling[key]
        for cluster, box in _clusters(members, rule):
            models = {m[2] for m in cluster}
            if len(models) < rule.min_models:
                count.too_few_models += 1
                continue
            fused.append({"label": label, "score": _score(cluster, box[0], rule),
                          "x0": box[1], "y0": box[2], "x1": box[3], "y1": box[4]})
            if support:
                fused[-1]["models"] = sorted(models)
    fused.sort(key=lambda d: -d["score"])
    count.boxes_out += len(fused)
    return fused


def _clusters(members: list[_Member], rule: FusionRule) -> list[tuple[list[_Member], list]]:
    """One label's boxes -> (cluster's boxes, its fused [conf, x0, y0, x1, y1]) pairs."""
    members = sorted(members, key=lambda m: -m[0])
    clusters: list[list[_Member]] = []
    fused: list[list[float]] = []
    for member in members:
        best, best_iou = -1, rule.iou
        for k, box in enumerate(fused):
            overlap = _iou(box, member)
            if overlap > best_iou:  # strictly over, as ensemble_boxes
                best, best_iou = k, overlap
        if best < 0:
            clusters.append([member])
            fused.append([member[0], *member[3:]])
        else:
            clusters[best].append(member)
            fused[best] = _weighted_box(clusters[best], rule.conf_type)
    return list(zip(clusters, fused))


def _iou(box: list[float], member: _Member) -> float:
    """IoU of a fused box [conf, x0, y0, x1, y1] and a member's box."""
    ix = min(box[3], member[5]) - max(box[1], member[3])
    iy = min(box[4], member[6]) - max(box[2], member[4])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = ((box[3] - box[1]) * (box[4] - box[2])
             + (member[5] - member[3]) * (member[6] - member[4]) - inter)
    return inter / union


def _weighted_box(cluster: list[_Member], conf_type: ConfType) -> list[float]:
    """A cluster's fused [conf, x0, y0, x1, y1]: corners weighted by the boxes' scores; conf
    their mean (avg) or best (max) weighted score, before the cluster-size rescale."""
    total = sum(m[0] for m in cluster)
    corners = [sum(m[0] * m[3 + i] for m in cluster) / total for i in range(4)]
    conf = total / len(cluster) if conf_type == "avg" else max(m[0] for m in cluster)
    return [conf, *corners]


def _score(cluster: list[_Member], conf: float, rule: FusionRule) -> float:
    """The cluster's final score (module docstring, rule 3): in [0, 1] but for "avg" with
    weights that differ, where several boxes of a heavier model in one cluster can pass 1,
    as in ensemble_boxes."""
    if rule.conf_type == "max":
        return conf / max(rule.weights)
    return conf * min(len(rule.weights), len(cluster)) / sum(rule.weights)
