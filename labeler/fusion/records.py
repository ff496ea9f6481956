"""One input's records from several box tasks fused into one record: the rules shared by
`labeler fuse` (a job's part files, labeler.fusion.run) and the online API's /v1/annotate
with `fuse` (labeler.serve.app), so both give the same numbers.

A fused record is the first source's record with:
    task            the sources' kind when they share one, else `detect`
    task_name       the fused task's name
    model           the sources' names joined by '+'; model_family `fuse`
    detections      weighted boxes fusion of the sources' boxes (labels renamed first;
                    labels and rename entries compared case and spaces aside)
    error           when any source failed: each failing source's `name: error`, joined by
                    '; ', and no detections (fusing the others would pass off some models'
                    boxes as the consensus)
    warnings        each source's, as `name: warning`
    parameters      JSON {"fuse": the settings, "labels": the sources' labels (renamed, in
                    order, each once case and spaces aside: as the first source lists it),
                    "sources": {name: that source's parameters}, "track"?}; a fused box is
                    labeled as these labels spell it, whichever source found it
    prompt, text, ocr_regions, timings, kept, filter_reason, model_revision: null
"""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
from pydantic import Field

from labeler.config import TrackingSpec, _Strict
from labeler.fusion.wbf import ConfType, FusionCount, FusionRule, fuse_boxes
from labeler.schemas.labels import label_key

# Task kinds whose rows each hold one image's (or frame's) boxes in pixels. Pseudo-label rows
# are left out: their labels are a caption's words, and `kept` is a verdict per model.
FUSED_KINDS = ("detect", "ground", "detect-by-example", "regions")
MODEL_FAMILY = "fuse"
# Distinct sources' parameters whose fused JSON is kept; most jobs have one per task, a job
# whose inputs bring their own examples one per row, so the memory must stay bounded.
PARAMETERS_KEPT = 1024
# The record's fields a fused record empties: they belong to one model's answer.
EMPTIED = ("model_revision", "prompt", "text", "ocr_regions", "timings", "kept",
           "filter_reason")


class FusionSpec(_Strict):
    """How several sources' boxes are fused (labeler.fusion.wbf)."""

    weights: list[Annotated[float, Field(gt=0.0)]] | None = Field(
        None, description="a weight per source task, in their order (default: 1 each)")
    iou: float = Field(0.55, gt=0.0, lt=1.0, description="a box joins a cluster whose fused "
                                                         "box it overlaps by more than this")
    min_score: float = Field(0.0, ge=0.0, le=1.0,
                             description="a task's boxes under it are dropped before fusing")
    conf_type: ConfType = Field("avg", description="a fused box's score: its boxes' mean "
                                                   "weighted score scaled by the share of "
                                                   "tasks that found it (avg), or their best")
    min_models: int = Field(1, ge=1, description="fewest tasks that found a kept box")
    rename: dict[str, str] = Field(default_factory=dict,
                                   description="a task's label -> the label it is fused as")

    def check_sources(self, count: int) -> None:
        """ValueError, starting with the field's name, when the settings do not fit `count`
        sources."""
        if self.weights is not None and len(self.weights) != count:
            raise ValueError(f"weights: {len(self.weights)} given for {count} tasks; give one "
                             f"per task, in the order of tasks")
        if self.min_models > count:
            raise ValueError(f"min_models: {self.min_models} is more than the {count} tasks "
                             f"fused")

    def rule(self, count: int) -> FusionRule:
        return FusionRule(tuple(self.weights or [1.0] * count), self.iou, self.min_score,
                          self.conf_type, self.min_models)

    def recorded(self, names: list[str]) -> dict:
        """The settings as a fused record's `parameters` hold them."""
        return {"method": "wbf", "tasks": list(names),
                **self.model_dump(include=set(FusionSpec.model_fields)),
                "weights": list(self.rule(len(names)).weights)}


def distinct_names(names: list[str]) -> list[str]:
    """Sources' names made distinct for the record: a name's second use `name#2`, and so on
    (the same model twice in a request, or task folders of one name in two job outputs)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def fused_kind(kinds: list[str]) -> str:
    """The fused task's kind: the sources' when they share one, else `detect`."""
    return kinds[0] if len(set(kinds)) == 1 else "detect"


class RecordFuser:
    """Fuses the records of one input from sources `names` (task folders, or a request's
    tasks) under `spec`; track: recorded in the parameters (the caller links the tracks)."""

    def __init__(self, names: list[str], spec: FusionSpec, kind: str, task_name: str,
                 track: TrackingSpec | None = None):
        spec.check_sources(len(names))
        self.names, self.spec, self.track = list(names), spec, track
        self.rule = spec.rule(len(names))
        self.constants = {"task": kind, "task_name": task_name, "model": "+".join(names),
                          "model_family": MODEL_FAMILY, **dict.fromkeys(EMPTIED)}
        self._recorded = spec.recorded(names)
        # The sources' parameters -> the fused ones and their labels' spellings (label_key ->
        # label).
        self._parameters: dict[tuple, tuple[str, dict[str, str]]] = {}
        self._rename_keys = {label_key(label): label for label in spec.rename}

    def fields(self, records: list[dict], count: FusionCount) -> dict:
        """The fused record's detections, error, warnings and parameters, from the sources'
        records (dicts with at least those fields, and width and height) in `names` order;
        `count` gathers what fusing did to the boxes."""
        pairs = list(zip(self.names, records, strict=True))
        errors = [f"{name}: {r['error']}" for name, r in pairs if r["error"]]
        warnings = [f"{name}: {w}" for name, r in pairs for w in r["warnings"] or []]
        parameters, spellings = self._parameters_of(records)
        fused = {"warnings": warnings or None, "parameters": parameters,
                 "error": "; ".join(errors) or None, "detections": None}
        if not errors:
            per_source = [r["detections"] or [] for r in records]
            if self.spec.rename:  # a copy of each box only when a label is renamed
                per_source = [[self._renamed(d, count) for d in boxes] for boxes in per_source]
            fused["detections"] = fuse_boxes(per_source, records[0]["width"],
                                             records[0]["height"], self.rule, count,
                                             spellings=spellings)
        return fused

    def record(self, records: list[dict], count: FusionCount) -> dict:
        """The fused record of one input's records (the online API's), as `labeler fuse`
        writes its row: the sources' boxes fused as a job's part files hold them, scores and
        corners in float32 (RECORD_SCHEMA), and the fused boxes in float32 too. Fusing the
        unrounded numbers would differ in the last digits, and where an IoU lies at the
        threshold (Florence-2's boxes on its grid of bins), in which boxes fuse."""
        stored = [{**r, "detections": _float32_boxes(r["detections"])} for r in records]
        fields = self.fields(stored, count)
        fields["detections"] = _float32_boxes(fields["detections"])
        return {**records[0], **self.constants, **fields}

    def _renamed(self, box: dict, count: FusionCount) -> dict:
        """`box`, or a copy under its new label when a `rename` entry names its label
        (label_key: case and spaces aside), counted under that entry."""
        entry = self._rename_keys.get(label_key(box["label"]))
        if entry is None:
            return box
        count.renamed[entry] = count.renamed.get(entry, 0) + 1
        return {**box, "label": self.spec.rename[entry]}

    def _parameters_of(self, records: list[dict]) -> tuple[str, dict[str, str]]:
        """The fused `parameters` JSON (module docstring) and its labels' spellings
        (label_key -> label); one pair per distinct sources' parameters, which are the same
        for most of a job's rows."""
        key = tuple(r["parameters"] for r in records)
        if key not in self._parameters:
            if len(self._parameters) >= PARAMETERS_KEPT:  # rows' own examples: each differs
                self._parameters.clear()
            sources = {name: json.loads(p) if p else None for name, p in zip(self.names, key)}
            spellings: dict[str, str] = {}  # label_key -> the first source's spelling
            for params in sources.values():
                listed = params.get("labels") if isinstance(params, dict) else None
                for label in listed if isinstance(listed, list) else []:
                    if not isinstance(label, str):
                        continue
                    entry = self._rename_keys.get(label_key(label))
                    renamed = label if entry is None else self.spec.rename[entry]
                    spellings.setdefault(label_key(renamed), renamed)
            parameters = {"fuse": self._recorded, "labels": list(spellings.values()),
                          "sources": sources}
            if self.track is not None:  # as a tracked job's rows record it
                parameters["track"] = self.track.model_dump(mode="json")
            self._parameters[key] = (json.dumps(parameters), spellings)
        return self._parameters[key]


_BOX_NUMBERS = ("score", "x0", "y0", "x1", "y1")


def _float32_boxes(boxes: list[dict] | None) -> list[dict] | None:
    """Copies of `boxes` with score and corners rounded to float32, as Parquet holds them."""
    if not boxes:
        return boxes
    numbers = np.array([[box[k] for k in _BOX_NUMBERS] for box in boxes],
                       dtype=np.float32).tolist()
    return [{**box, **dict(zip(_BOX_NUMBERS, row))} for box, row in zip(boxes, numbers)]
