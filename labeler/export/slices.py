"""Slicing an export into tiles, as SAHI's slice_coco does for training on large images.

A detector trains at a fixed input (640 px for Ultralytics' YOLO); a 4000x3000 photo shrunk
to it loses what tiles were used to find. `--slice SIZE` writes each image as SIZE x SIZE
slices of the oriented image (smaller only where the image is), overlapping by a share of
SIZE; each slice carries the boxes that show enough in it.

Geometry (SAHI's get_slice_bboxes): along a side of L pixels, slices start every
SIZE x (1 - overlap) pixels from 0, and the last one is moved back to end at L, so every
slice is SIZE long; a side no longer than SIZE is one slice, the whole side.

Boxes: a box is cut to the slice and kept when the part inside holds at least
`min_visible` of its area (SAHI's min_area_ratio, default 0.1), in the slice's pixels. A box
without area (a line or a point) is kept where it lies inside the slice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from labeler.export.rows import Box, Row

Window = tuple[int, int, int, int]  # x0, y0, x1, y1: pixels of the oriented image, end-exclusive


@dataclass(frozen=True)
class SliceOptions:
    """size: side of a slice in pixels; overlap: share of `size` neighbours have in common,
    in [0, 1); min_visible: share of a box's area that must lie in a slice, in (0, 1];
    skip_empty: leave out the slices that get no box."""

    size: int
    overlap: float = 0.2
    min_visible: float = 0.1
    skip_empty: bool = False


def slice_starts(length: int, size: int, overlap: float) -> list[int]:
    """Where the slices of one side start; see the module docstring."""
    if length <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    return [*range(0, length - size, step), length - size]


def slice_windows(width: int, height: int, options: SliceOptions) -> list[Window]:
    """The slices of a width x height image, row by row, left to right."""
    xs = slice_starts(width, options.size, options.overlap)
    ys = slice_starts(height, options.size, options.overlap)
    return [(x, y, min(x + options.size, width), min(y + options.size, height))
            for y in ys for x in xs]


def _visible_part(box: Box, window: Window, min_visible: float) -> Box | None:
    """The box cut to the window, in the window's pixels, or None when too little shows."""
    x0, y0, x1, y1 = window
    cut = (max(box.x0, x0), max(box.y0, y0), min(box.x1, x1), min(box.y1, y1))
    if cut[0] > cut[2] or cut[1] > cut[3]:
        return None  # outside, not even touching
    area = (box.x1 - box.x0) * (box.y1 - box.y0)
    if area > 0 and (cut[2] - cut[0]) * (cut[3] - cut[1]) < min_visible * area:
        return None
    if area <= 0 and cut != (box.x0, box.y0, box.x1, box.y1):
        return None  # a box without area is kept whole or not at all
    return Box(box.label, box.score, cut[0] - x0, cut[1] - y0, cut[2] - x0, cut[3] - y0)


def slice_row(row: Row, window: Window, min_visible: float) -> tuple[Row, int]:
    """The row as one slice: its size, its boxes cut and moved into it, `window` set ->
    (that row, the number of boxes that touch the slice but show too little in it)."""
    boxes, dropped = [], 0
    for box in row.boxes:
        part = _visible_part(box, window, min_visible)
        if part is not None:
            boxes.append(part)
        elif (box.x0 < window[2] and box.x1 > window[0]
              and box.y0 < window[3] and box.y1 > window[1]):
            dropped += 1
    x0, y0, x1, y1 = window
    return dataclasses.replace(row, width=x1 - x0, height=y1 - y0, boxes=tuple(boxes),
                               window=window), dropped
