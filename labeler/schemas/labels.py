"""How two label names are compared wherever boxes of different sources meet (eval against
ground truth, fuse and select across tasks): case and runs of spaces aside, so that
`Traffic  Light`, `traffic light` and a model's `Dog` against another's `dog` are one."""

from __future__ import annotations


def label_key(name: str) -> str:
    """`name` as compared: runs of white space as one space, no outer spaces, casefolded."""
    return " ".join(name.split()).casefold()
