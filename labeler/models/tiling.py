"""Sliced inference for detectors (the SAHI recipe): where the tiles of an image lie, how a
tile is cut from decoded pixels, and how the boxes of all tiles become one image's boxes.

Geometry. An axis of length L cut into n tiles that overlap by a fraction o of a tile has
tiles of length t = L / (n - (n - 1) o), starting every t (1 - o); the last one ends at L.
Bounds are rounded to whole pixels from the size at hand, so the pixels a decode task cuts
and the window that postprocessing maps boxes into are the same integers whenever the image
was decoded at full size (a JPEG reduced on load is cut within half a decoded pixel of it).

Merging. Boxes of every window are in image pixels (each clipped to its window) and merged
per label by greedy non-maximum merging on intersection over the smaller box (IoS), as
SAHI's default GREEDYNMM postprocess does: best box first, each remaining box of its label
that overlaps it by IoS >= threshold (checked against the box grown so far) is merged into
it, and the merged box is the box around both, with the best score. IoS rather than IoU
because a tile's edge cuts an object: the cut part lies inside the whole object's box (IoS
near 1) but covers little of it (low IoU).
"""

from __future__ import annotations

import numpy as np

from labeler.config import TilingSpec

Window = tuple[int, int, int, int]  # x0, y0, x1, y1: pixels, end-exclusive


def _axis_bounds(length: int, n: int, overlap: float) -> list[tuple[int, int]]:
    """n overlapping (start, end) pixel ranges covering [0, length), each at least 1 long."""
    tile = length / (n - (n - 1) * overlap)
    step = tile * (1 - overlap)
    bounds = []
    for k in range(n):
        start = min(round(k * step), length - 1)
        end = length if k == n - 1 else max(round(k * step + tile), start + 1)
        bounds.append((start, end))
    return bounds


def tile_windows(width: int, height: int, tiling: TilingSpec) -> list[Window]:
    """The windows an image of width x height pixels is labelled through: the whole image
    first (when tiling.full_image), then the grid's tiles row by row, left to right;
    len == tiling.inputs_per_image."""
    columns, rows = tiling.grid
    windows = [(0, 0, width, height)] if tiling.full_image else []
    for y0, y1 in _axis_bounds(height, rows, tiling.overlap):
        for x0, x1 in _axis_bounds(width, columns, tiling.overlap):
            windows.append((x0, y0, x1, y1))
    return windows


def cut_windows(pixels: np.ndarray, tiling: TilingSpec) -> list[np.ndarray]:
    """(h, w, 3) pixels -> one view (h_k, w_k, 3) per window of tile_windows(w, h), no copy."""
    height, width = pixels.shape[:2]
    return [pixels[y0:y1, x0:x1] for x0, y0, x1, y1 in tile_windows(width, height, tiling)]


def _pairwise_ios(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, N) intersection over the smaller box's area; 0 where the smaller
    box has no area (a box flattened by clipping matches nothing)."""
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    width = np.minimum.outer(x1, x1) - np.maximum.outer(x0, x0)
    height = np.minimum.outer(y1, y1) - np.maximum.outer(y0, y0)
    inter = np.maximum(width, 0.0) * np.maximum(height, 0.0)
    area = (x1 - x0) * (y1 - y0)
    smaller = np.minimum.outer(area, area)
    return np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)


def _ios(a: list[float], b: list[float]) -> float:
    """_pairwise_ios of two boxes given as [x0, y0, x1, y1] lists."""
    inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
             * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller if smaller > 0 else 0.0


def merge_windows(per_window: list[list[dict]], threshold: float) -> list[dict]:
    """The detections of one image's windows ({label, score, x0, y0, x1, y1} dicts in image
    pixels, any other keys kept from the best box of a group) -> the image's detections,
    merged per label (see the module docstring), best score first."""
    detections = [d for window in per_window for d in window]
    window_of = [w for w, window in enumerate(per_window) for _ in window]
    # Among equal scores (a confident model saturates at 1.0) the earlier window leads (the
    # whole image first), then the box nearer the top left, so that the result does not
    # depend on how each window's list was ordered.
    order = sorted(range(len(detections)), key=lambda k: (
        -detections[k]["score"], window_of[k], detections[k]["y0"], detections[k]["x0"],
        detections[k]["y1"], detections[k]["x1"]))
    by_label: dict[str, list[int]] = {}
    for k in order:
        by_label.setdefault(detections[k]["label"], []).append(k)
    merged = []
    for members in by_label.values():
        boxes = np.array([[detections[k][c] for c in ("x0", "y0", "x1", "y1")]
                          for k in members], dtype=np.float64)
        matches = _pairwise_ios(boxes) >= threshold  # (N, N), members in merge order
        unmerged = np.ones(len(members), dtype=bool)
        for lead in range(len(members)):
            if not unmerged[lead]:
                continue
            unmerged[lead] = False
            matched = np.flatnonzero(unmerged & matches[lead])
            unmerged[matched] = False
            box = boxes[lead].tolist()
            for m in matched.tolist():  # SAHI re-checks each against the box grown so far
                other = boxes[m].tolist()
                if _ios(box, other) >= threshold:
                    box = [min(box[0], other[0]), min(box[1], other[1]),
                           max(box[2], other[2]), max(box[3], other[3])]
            out = dict(detections[members[lead]])
            out.update(x0=box[0], y0=box[1], x1=box[2], y1=box[3])
            merged.append(out)
    merged.sort(key=lambda d: -d["score"])  # stable: equal scores keep that order
    return merged
