"""Box quality against ground truth, with pycocotools (the reference COCO evaluation).

Per category: AP (mean over IoU 0.50:0.05:0.95) and AP50, as COCOeval's summary computes
them (area "all", at most MAX_DETECTIONS boxes per image and category), and the score
threshold that gives the best F1 at one IoU: from COCOeval's own per-image matching, the
boxes of all images ranked by score, precision = TP / (TP + FP) and recall = TP / ground-truth
boxes after keeping those scoring at least each score seen. That threshold is the
`label_thresholds` value that makes a job's boxes best for that label on this ground truth.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

# COCOeval's largest maxDets, the boxes per image and category it ranks (its summary's
# "maxDets=100" figures).
MAX_DETECTIONS = 100
# The IoU thresholds COCOeval matches at: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


@dataclass(frozen=True)
class Detection:
    """One predicted box on a ground-truth image: category id, score, [x, y, w, h] pixels."""

    image_id: int
    category_id: int
    score: float
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True)
class CategoryScores:
    """One category's figures. ap / ap50: None when the images hold no box of it (COCOeval's
    -1); best_*: at the best-F1 threshold at the chosen IoU (None when no box matched)."""

    category_id: int
    ground_truth: int  # boxes (crowd regions apart) on the evaluated images
    detections: int  # boxes ranked: at most MAX_DETECTIONS an image, crowd matches apart
    ap: float | None
    ap50: float | None
    best_f1: float | None
    best_threshold: float | None
    best_precision: float | None
    best_recall: float | None
    next_score: float | None  # the highest score under best_threshold (None: none lower)


@dataclass(frozen=True)
class ImageErrors:
    """One image at the best-F1 thresholds (a category without one: every box kept), at the
    chosen IoU: boxes kept, ground-truth boxes, kept boxes matching none (false_boxes) and
    ground-truth boxes no kept box matches (missed); crowd regions apart."""

    image_id: int
    kept: int
    truth: int
    false_boxes: int
    missed: int


def evaluate(dataset: dict, image_ids: list[int], category_ids: list[int],
             detections: list[Detection], iou: float
             ) -> tuple[list[CategoryScores], list[ImageErrors]]:
    """COCOeval (bbox) of `detections` against the ground truth `dataset` (a checked COCO
    dict), over `image_ids` and `category_ids` only -> one CategoryScores per category id,
    in order, and one ImageErrors per image with a box or a ground-truth box, by image id.
    `iou` (one of IOU_THRESHOLDS) is where the best-F1 threshold is found."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = _coco(COCO, dataset)
        dt = _coco(COCO, {"images": dataset["images"], "categories": dataset["categories"],
                          "annotations": [
                              {"id": k + 1, "image_id": d.image_id, "category_id": d.category_id,
                               "bbox": list(d.bbox), "score": d.score, "iscrowd": 0,
                               "area": d.bbox[2] * d.bbox[3]}
                              for k, d in enumerate(detections)]})
        coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.params.imgIds = sorted(image_ids)
        # COCOeval sorts catIds (np.unique): the K axis of its arrays is in sorted order.
        coco_eval.params.catIds = sorted(category_ids)
        coco_eval.params.maxDets = [1, 10, MAX_DETECTIONS]
        # Area "all" only: the small / medium / large ranges would each cost as much again
        # (evaluateImg runs per image, category and range) for figures not reported.
        coco_eval.params.areaRng = coco_eval.params.areaRng[:1]
        coco_eval.params.areaRngLbl = coco_eval.params.areaRngLbl[:1]
        coco_eval.evaluate()
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"]  # (T iou, R recall points, K, A areas, M maxDets)
    t = IOU_THRESHOLDS.index(iou)
    by_category: dict[int, list[dict]] = {}
    for e in coco_eval.evalImgs:
        if e is not None:
            by_category.setdefault(e["category_id"], []).append(e)
    column = {category_id: k for k, category_id in enumerate(sorted(category_ids))}
    out = []
    for category_id in category_ids:
        k = column[category_id]
        curve = _ranked_curve(by_category.get(category_id, []), t)
        out.append(CategoryScores(
            category_id=category_id,
            ground_truth=curve.ground_truth,
            detections=len(curve.scores),
            ap=_mean_precision(precision[:, :, k, 0, -1]),
            ap50=_mean_precision(precision[0, :, k, 0, -1]),
            **curve.best_f1()))
    thresholds = {c.category_id: c.best_threshold for c in out}
    return out, _image_errors(coco_eval.evalImgs, t, thresholds)


def _image_errors(matches: list[dict | None], t: int,
                  thresholds: dict[int, float | None]) -> list[ImageErrors]:
    """Per image, from COCOeval's matches at IoU index t. Keeping only the boxes scoring at
    least the threshold changes no match of a kept box: COCOeval matches boxes greedily in
    score order, so lower-scored boxes never took a ground truth from a higher one."""
    counts: dict[int, list[int]] = {}  # image id -> [kept, truth, false_boxes, missed]
    for e in matches:
        if e is None:
            continue
        low = thresholds.get(e["category_id"])
        kept = {d for d, score in zip(e["dtIds"], e["dtScores"]) if low is None or score >= low}
        row = counts.setdefault(e["image_id"], [0, 0, 0, 0])
        for d, matched, ignored in zip(e["dtIds"], e["dtMatches"][t], e["dtIgnore"][t]):
            if d in kept and not ignored:
                row[0] += 1
                row[2] += not matched
        for matched_by, ignored in zip(e["gtMatches"][t], e["gtIgnore"]):
            if not ignored:
                row[1] += 1
                row[3] += int(matched_by) not in kept
    return [ImageErrors(image_id, *row) for image_id, row in sorted(counts.items())]


def _coco(coco_class, dataset: dict):
    coco = coco_class()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _mean_precision(values: np.ndarray) -> float | None:
    """COCOeval.summarize's mean: over the recall points of present categories (-1: absent)."""
    present = values[values > -1]
    return float(present.mean()) if present.size else None


@dataclass(frozen=True)
class RankedCurve:
    """The boxes of one category over all images, highest score first (ties kept in
    COCOeval's order): scores (D,), tp (D,) bool at one IoU; `ignored` boxes (matched to a
    crowd region) are left out. ground_truth: the boxes to find."""

    scores: np.ndarray
    tp: np.ndarray
    ground_truth: int

    def best_f1(self) -> dict:
        """{best_f1, best_threshold, best_precision, best_recall, next_score}: keeping the
        boxes scoring at least a threshold, the threshold (one of the scores) with the highest
        F1, the highest such threshold on a tie; next_score: the highest score under it. All
        None when no box is a true positive."""
        none = {"best_f1": None, "best_threshold": None, "best_precision": None,
                "best_recall": None, "next_score": None}
        if not self.ground_truth or not self.tp.any():
            return none
        tp = np.cumsum(self.tp)
        kept = np.arange(1, len(tp) + 1)
        # A threshold keeps every box scoring at least it: only the last box of a run of
        # equal scores is a place to cut.
        cut = np.append(self.scores[1:] != self.scores[:-1], True)
        precision, recall = tp / kept, tp / self.ground_truth
        # F1 = 2PR / (P + R) = 2 TP / (kept + ground truth): one division, so cuts of equal
        # F1 give equal floats and the tie goes to the highest (2PR / (P + R) rounds apart).
        f1 = 2 * tp / (kept + self.ground_truth)
        f1 = np.where(cut, f1, -1.0)
        best = int(np.argmax(f1))  # first maximum: the highest threshold
        below = float(self.scores[best + 1]) if best + 1 < len(self.scores) else None
        return {"best_f1": float(f1[best]), "best_threshold": float(self.scores[best]),
                "best_precision": float(precision[best]), "best_recall": float(recall[best]),
                "next_score": below}


def _ranked_curve(matches: list[dict], t: int) -> RankedCurve:
    """COCOeval.accumulate's ranking of one category's boxes (area all, maxDet already
    applied by evaluateImg), at IoU index t, before its precision interpolation."""
    if not matches:
        return RankedCurve(np.zeros(0), np.zeros(0, dtype=bool), 0)
    scores = np.concatenate([np.asarray(e["dtScores"], dtype=float) for e in matches])
    order = np.argsort(-scores, kind="mergesort")  # COCOeval's sort, so ties rank alike
    matched = np.concatenate([e["dtMatches"][t] for e in matches])[order] > 0
    ignored = np.concatenate([e["dtIgnore"][t] for e in matches])[order].astype(bool)
    ground_truth = int(sum(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0) for e in matches))
    return RankedCurve(scores[order][~ignored], matched[~ignored], ground_truth)
