"""Boxes drawn on each input, for detect-by-example: an input's `examples` field.

A manifest row (a Parquet list of structs, a JSONL list, or JSON text) may hold
`examples: [{"label": "mug", "box": [x0, y0, x1, y1]}, ...]`, boxes in pixels of that
row's image: a detect-by-example task then finds more like them in it (annotation
completion: a few objects drawn per image, the rest found), as the online API does with a
request's `examples`. The planner carries the field as JSON text in the pipeline column
EXAMPLES_COLUMN ("" for none); the model actor checks it against the decoded image, and a
row whose examples are not valid becomes an error row saying why.
"""

from __future__ import annotations

import json
from numbers import Real

from labeler.models.base import Example, box_fits

# The pipeline column and the input field.
EXAMPLES_COLUMN = "examples"
# As the online API: more boxes than this on one image is a mistake, not a query.
MAX_EXAMPLES = 64


def examples_text(value) -> str:
    """An input's `examples` field as the pipeline carries it: JSON text, "" for none."""
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=_listed)


def _listed(value):
    """JSON for what Arrow hands back for list columns (NumPy arrays, tuples)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def parse_examples(text: str, width: int, height: int) -> tuple[Example, ...]:
    """JSON text of [{"label", "box": [x0, y0, x1, y1]}, ...] -> Examples, each box inside
    the width x height image (x0 < x1, y0 < y1). ValueError saying which entry is wrong."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"examples: not valid JSON: {err}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError("examples: a non-empty list of {label, box} is required")
    if len(entries) > MAX_EXAMPLES:
        raise ValueError(f"examples: {len(entries)} boxes, more than {MAX_EXAMPLES}")
    examples = []
    for i, entry in enumerate(entries):
        label = entry.get("label") if isinstance(entry, dict) else None
        box = entry.get("box") if isinstance(entry, dict) else None
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"examples.{i}.label: a non-empty text is required")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, Real) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"examples.{i}.box: [x0, y0, x1, y1] in pixels is required")
        pixels = tuple(float(v) for v in box)
        if not box_fits(pixels, width, height):
            raise ValueError(f"examples.{i}.box: {box} is not a box inside the "
                             f"{width}x{height} image")
        examples.append(Example(label.strip(), pixels))
    return tuple(examples)
