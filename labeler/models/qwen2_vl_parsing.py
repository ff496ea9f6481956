"""Pure parsers of Qwen2-VL grounding answers: box tokens in, pixel boxes and warnings out.

Qwen2-VL answers a grounding prompt with

    <|object_ref_start|>a cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>

where (x1, y1) is the top-left and (x2, y2) the bottom-right corner on a 0-1000 grid over
the *original* image (the processor resizes images to a multiple of 28 pixels, but the
coordinates are relative to the image, not to the resized pixels), so a corner maps to
pixels as x * width / 1000, y * height / 1000.

Rules:
- a box takes the label of the last complete reference before it, "" when there is none;
  several boxes after one reference all take its label;
- a reference still open when a box starts (no <|object_ref_end|>) ends there, with a warning;
- a box body must be exactly two points `(x, y),(x, y)` (spaces allowed); anything else is
  dropped with a warning, as is a truncated body (text ends before <|box_end|>); a complete
  body whose <|box_end|> is missing is kept, with a warning;
- coordinates outside 0-1000 are clipped to the grid, corners given the wrong way round are
  swapped, each with a warning;
- stray <|object_ref_end|> / <|box_end|> are ignored with a warning; text with no markers at
  all gives no boxes and no warning (an answer without boxes is a valid answer).

Nothing here raises on model text. A box remembers the character span it was read from
(`start`, `end`), so that the adapter can score it from the tokens that produced those
characters (`span_confidence`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Qwen2-VL writes box corners as integers on a 0-1000 grid of the image, whatever its size.
GRID = 1000.0

REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
#: The special tokens a grounding answer is parsed from; decoding keeps exactly these.
GROUNDING_TOKENS = (REF_START, REF_END, BOX_START, BOX_END)

_MARKER = re.compile("|".join(re.escape(t) for t in GROUNDING_TOKENS))
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_POINT = rf"\({_NUMBER},{_NUMBER}\)"
_BOX_BODY = re.compile(rf"\s*{_POINT}\s*,\s*{_POINT}\s*")
# Model text quoted in a warning is cut to this many characters, to keep rows small.
_QUOTE_CHARS = 40


@dataclass(frozen=True)
class GroundedBox:
    """One box read from an answer: label, corners in pixels of the original image
    (x0 <= x1, y0 <= y1, inside [0, width] x [0, height]), and the character span
    [start, end) of `<|box_start|>...<|box_end|>` in the parsed text."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    start: int
    end: int


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "...")


def grid_to_pixels(coords: Sequence[float], width: int, height: int, where: int,
                   warnings: list[str]) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) on the 0-1000 grid -> (x0, y0, x1, y1) pixels of a width x height
    image; clips to the grid and orders the corners, appending a warning for each fix."""
    clipped = [min(max(v, 0.0), GRID) for v in coords]
    if clipped != list(coords):
        warnings.append(f"box at char {where}: coordinates {tuple(coords)} outside the "
                        f"0-{GRID:g} grid, clipped")
    x0, y0, x1, y1 = clipped
    if x0 > x1 or y0 > y1:
        warnings.append(f"box at char {where}: corners given in reverse order, swapped")
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
    return x0 * width / GRID, y0 * height / GRID, x1 * width / GRID, y1 * height / GRID


def parse_grounding(text: str, width: int, height: int) -> tuple[list[GroundedBox], list[str]]:
    """A grounding answer (box/ref tokens kept) -> (boxes in order of appearance, warnings).

    width, height: the original image size in pixels, which the 0-1000 grid spans.
    """
    boxes: list[GroundedBox] = []
    warnings: list[str] = []
    markers = list(_MARKER.finditer(text))
    label = ""  # the last complete reference
    ref_open_at: int | None = None  # end of an open <|object_ref_start|>
    i = 0
    while i < len(markers):
        marker = markers[i]
        token = marker.group()
        if token == REF_START:
            if ref_open_at is not None:
                warnings.append(f"reference at char {marker.start()} opens inside an unclosed "
                                f"reference; the earlier one is dropped")
            ref_open_at = marker.end()
        elif token == REF_END:
            if ref_open_at is None:
                warnings.append(f"{REF_END} at char {marker.start()} without {REF_START}, ignored")
            else:
                label, ref_open_at = text[ref_open_at:marker.start()].strip(), None
        elif token == BOX_END:
            warnings.append(f"{BOX_END} at char {marker.start()} without {BOX_START}, ignored")
        else:  # BOX_START
            if ref_open_at is not None:
                label, ref_open_at = text[ref_open_at:marker.start()].strip(), None
                warnings.append(f"reference {label!r} has no {REF_END}; it ends at the box at "
                                f"char {marker.start()}")
            following = markers[i + 1] if i + 1 < len(markers) else None
            closed = following is not None and following.group() == BOX_END
            body_end = following.start() if following is not None else len(text)
            body = text[marker.end():body_end]
            if closed:
                i += 1
            box = _read_box(body, label, marker.start(), following.end() if closed else body_end,
                            closed, width, height, warnings)
            if box is not None:
                boxes.append(box)
        i += 1
    if ref_open_at is not None:
        warnings.append(f"reference {_quote(text[ref_open_at:])} is never closed and has no box")
    return boxes, warnings


def _read_box(body: str, label: str, start: int, end: int, closed: bool, width: int,
              height: int, warnings: list[str]) -> GroundedBox | None:
    """One box body `(x1,y1),(x2,y2)` -> a box, or None with a warning."""
    match = _BOX_BODY.fullmatch(body)
    if match is None:
        what = "box" if closed else f"truncated box (no {BOX_END})"
        warnings.append(f"{what} at char {start} is not two points (x,y),(x,y): "
                        f"{_quote(body)}; dropped")
        return None
    if not closed:
        warnings.append(f"box at char {start} has no {BOX_END}; kept")
    coords = [float(v) for v in match.groups()]
    x0, y0, x1, y1 = grid_to_pixels(coords, width, height, start, warnings)
    return GroundedBox(label, x0, y0, x1, y1, start, end)


def span_confidence(token_spans: Sequence[tuple[int, int]], logprobs: Sequence[float],
                    start: int, end: int) -> float:
    """Geometric mean of the probabilities of the tokens that produced text[start:end].

    token_spans: per generated token, its [begin, end) characters in the decoded text (an
    empty span for a token that left no text); logprobs: per token, natural-log probability.
    For a box span this is the <|box_start|> token, the coordinate tokens and <|box_end|>.
    """
    picked = [lp for (a, b), lp in zip(token_spans, logprobs) if a < end and b > start]
    return math.exp(sum(picked) / len(picked))
