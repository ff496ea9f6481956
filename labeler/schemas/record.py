"""Schema v2 of the annotation record (v1 plus the video, pseudo-label, objectness and
track fields, all nullable: a v1 reader's columns are unchanged).

The pydantic models below are the single definition: `RECORD_SCHEMA` (Arrow, for Parquet)
is derived from them, and the online API returns the same models as JSON. docs/schema.md
documents every field. Boxes are xyxy float pixels in the original, EXIF-oriented image.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Union

import pyarrow as pa
from pydantic import BaseModel, Field

SCHEMA_VERSION = "2"

# Scores and coordinates need no more than float32: pixels are < 2^24 and scores are probabilities.
Float32 = Annotated[float, pa.float32()]
Int32 = Annotated[int, pa.int32()]


class Detection(BaseModel):
    """One box: label, score in [0, 1], corners (x0, y0) top-left and (x1, y1) bottom-right.

    Region captions are detections whose label is the caption; region proposals have label "".
    polygon: optional outline as [x0, y0, x1, y1, ...] pixels, for models that give one.
    """

    label: str
    score: Float32
    x0: Float32
    y0: Float32
    x1: Float32
    y1: Float32
    polygon: list[Float32] | None = None
    objectness: Float32 | None = Field(
        None, description="OWLv2's objectness of the box, sigmoid in [0, 1] (pseudo-label rows)")
    track_id: Int32 | None = Field(
        None, description="video frame rows of a task with `track`: the object's track in its "
                          "video (1, 2, ...), shared with its boxes in other frames; null for a "
                          "box in no track")


class OcrRegion(BaseModel):
    """One line of text and its quadrilateral, corners clockwise from the top-left, pixels."""

    text: str
    x0: Float32
    y0: Float32
    x1: Float32
    y1: Float32
    x2: Float32
    y2: Float32
    x3: Float32
    y3: Float32


class Timings(BaseModel):
    """Milliseconds spent on this row per stage (a batch's time divided by its rows)."""

    decode_ms: Float32 | None = None
    preprocess_ms: Float32 | None = None
    predict_ms: Float32 | None = None
    postprocess_ms: Float32 | None = None


class VideoMeta(BaseModel):
    """The video a frame or clip row comes from, as probed: display size in pixels (after
    rotation), duration in seconds and average frame rate (null when the container does not
    say), and the codec's name."""

    width: Int32
    height: Int32
    duration_s: float | None = None
    fps: float | None = None
    codec: str


class Record(BaseModel):
    """One output row: one input, one task."""

    id: str = Field(description="stable input id: the path relative to the input root")
    uri: str = Field(description="where the input was read from")
    width: Int32 | None = Field(None, description="image width as its EXIF orientation shows it")
    height: Int32 | None = Field(None, description="image height, likewise")
    task: str
    task_name: str = Field(description="the task's output name (several tasks may share a kind)")
    model: str = Field(description="model source: hub id, folder or s3:// prefix")
    model_family: str
    model_revision: str | None = None
    parameters: str = Field(description="JSON of the parameters that produced the row")
    prompt: str | None = Field(None, description="the prompt or queries the model was given")
    detections: list[Detection] | None = None
    text: str | None = Field(None, description="caption, answer or OCR text")
    ocr_regions: list[OcrRegion] | None = None
    warnings: list[str] | None = Field(
        None, description="what could not be parsed from the model's output, row still kept")
    error: str | None = Field(None, description="null unless the row failed; then the reason")
    timings: Timings | None = None
    # Video rows (input.media: video): a frame row has frame_index and timestamp_s, a clip
    # row clip_start_s and clip_end_s; id and uri are the video's.
    frame_index: int | None = Field(None, description="frame's position among all frames of "
                                                      "the video, in presentation order")
    timestamp_s: float | None = Field(None, description="frame time in seconds from the "
                                                        "stream's start (its pts)")
    clip_start_s: float | None = Field(None, description="clip start in seconds, inclusive")
    clip_end_s: float | None = Field(None, description="clip end in seconds, exclusive")
    video: VideoMeta | None = None
    # Pseudo-label rows: whether the image passes the image threshold, and if not, why.
    kept: bool | None = None
    filter_reason: str | None = Field(None, description="why kept is false")


_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(annotation) -> tuple[pa.DataType, bool]:
    """(Arrow type, nullable) of a pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        (inner,) = args
        return _arrow_type(inner)[0], True
    if origin is Annotated:
        _, arrow, *_ = typing.get_args(annotation)
        return arrow, False
    if origin is list:
        (item,) = typing.get_args(annotation)
        return pa.list_(pa.field("item", *_arrow_type(item))), False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(list(arrow_schema(annotation))), False
    return _SCALARS[annotation], False


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """Derive an Arrow schema from a pydantic model, field by field."""
    hints = typing.get_type_hints(model, include_extras=True)
    fields = [pa.field(name, *_arrow_type(hints[name])) for name in model.model_fields]
    return pa.schema(fields, metadata={"labeler.schema_version": SCHEMA_VERSION})


RECORD_SCHEMA = arrow_schema(Record)


def as_stored(record: dict) -> dict:
    """`record` with its boxes and OCR regions as a Parquet row reads them back: scores and
    coordinates rounded to float32 (a score 0.87345123291 reads back 0.8734512329101562),
    every field of each present (None when absent). The online API answers with it, so a
    served record and a batch row of the same image carry the same numbers."""
    stored = dict(record)
    for name in ("detections", "ocr_regions"):
        if stored.get(name):
            item_type = RECORD_SCHEMA.field(name).type.value_type
            stored[name] = pa.array(stored[name], type=item_type).to_pylist()
    return stored
