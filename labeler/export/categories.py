"""Category ids of an export, the same on every run of the same export.

Order: the task's labels as its spec gave them (the `labels` list in the rows' `parameters`),
then every other label of an exported box, sorted (prompted grounding, per-row prompts,
pseudo-label n-grams). A label of the spec keeps its id even when no box has it, so exports
of one spec share ids. COCO numbers categories from 1, YOLO classes from 0 (`index`).
"""

from __future__ import annotations

from collections.abc import Iterable

from labeler.export.rows import ExportError


class Categories:
    """names: category names in id order; index(label) -> its 0-based position.

    task_labels: the spec's labels in order; seen: the labels of the exported boxes (a set
    of distinct names: what both formats list anyway)."""

    def __init__(self, task_labels: list[str], seen: Iterable[str]):
        self.names = list(task_labels) + sorted(set(seen).difference(task_labels))
        self._index = {name: i for i, name in enumerate(self.names)}

    def index(self, label: str) -> int:
        try:
            return self._index[label]
        except KeyError:  # both passes read the same files: one was replaced in between
            raise ExportError(f"label {label!r} appeared after the categories were read: the "
                              f"job output changed during the export; run it again") from None
