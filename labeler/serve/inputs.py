"""HTTP request bodies -> validated requests and image or video bytes.

Every endpoint takes either a JSON body or a multipart form (the image as file field
`image`, a video as `video`, parameters as form fields; `labels` as repeated fields, a JSON
list, or comma-separated; `tasks`, `sampling`, `clip` and `track` as JSON). Exactly one
source: an upload, base64 in `image` / `video` (a `data:` URL too), or `uri`. Everything
wrong with a body is an ApiError naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationError,
                      model_validator)
from starlette.datastructures import UploadFile
from starlette.requests import Request

from labeler.config import ClipSpec, SamplingSpec, TrackingSpec, format_validation_error
from labeler.fusion.records import FusionSpec
from labeler.models.base import box_fits
from labeler.serve.errors import ApiError
from labeler.serve.limits import read_body


class ExampleBox(BaseModel):
    """A box drawn around an object in the request's image, to find more like it."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="the class the box shows; its boxes' label")
    box: tuple[float, float, float, float] = Field(
        description="x0, y0, x1, y1 in pixels of the image (as it is displayed: EXIF "
                    "orientation applied)")


class Params(BaseModel):
    """Per-request parameters, as in a job spec; None keeps the served model's."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a served model's name (GET /v1/models)")
    labels: list[str] | None = Field(None, description="class names / queries (detect)")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="minimum box score")
    prompt: str | None = Field(None, description="instruction, question or phrases")
    caption: str | None = Field(None, description="the image's caption, whose phrases become "
                                "the queries (pseudo-label)")
    examples: list[ExampleBox] | None = Field(
        None, min_length=1, max_length=64,
        description="boxes drawn in the image (or in example_image); detect-by-example finds "
                    "more like them, a query per label (its boxes averaged), instead of the "
                    "served query image")
    example_image: str | None = Field(
        None, description="the image `examples` are drawn on, when not the one labelled: its "
                          "bytes, base64 (or a data: URL; multipart: a file field)")
    example_uri: str | None = Field(
        None, description="the image `examples` are drawn on, as an https:// or s3:// URI")


class ImageSource(BaseModel):
    """Where a request's image comes from: exactly one of image and uri (or an upload)."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="the image file's bytes, base64 (or a data: URL)")
    uri: str | None = Field(None, description="https:// or s3:// URI, within the server's allow lists")
    id: str | None = Field(None, description="your id for the image, echoed in the record")


class ImageRequest(ImageSource, Params):
    """One image for one task."""


class TaskParams(Params):
    task: str | None = Field(None, description="task; default: the named model's task")


# Entries of one /v1/annotate request: each is a request to a model's queue, so a request of
# many could fill a queue on its own (a 503 that no retry cures).
MAX_ANNOTATE_TASKS = 32


class AnnotateRequest(ImageSource):
    """One image for several tasks. Each entry picks a model and its parameters; there are
    no parameters outside them (an unknown field, 422, rather than one silently unused)."""

    tasks: list[TaskParams] = Field(min_length=1, max_length=MAX_ANNOTATE_TASKS)

    @model_validator(mode="before")
    @classmethod
    def _parameters_in_entries(cls, fields):
        misplaced = [name for name in Params.model_fields if isinstance(fields, dict)
                     and name in fields]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: a task's parameters go in its entry of "
                             f"tasks (tasks: [{{\"model\": ..., \"{misplaced[0]}\": ...}}]), "
                             f"not beside tasks")
        return fields
    fuse: FusionSpec | None = Field(
        None, description="the box tasks' boxes fused into one record, `fused` in the "
                          "response, as `labeler fuse` fuses a job's tasks (weighted boxes "
                          "fusion); {} for the defaults")


class VideoRequest(Params):
    """One video for one model: its sampled frames (or clips, for video-caption and
    video-ask), labelled as a batch video job labels them, boxes linked into tracks."""

    task: str | None = Field(None, description="task; default: the named model's task")
    video: str | None = Field(None, description="the video file's bytes, base64 (or a data: URL)")
    uri: str | None = Field(None, description="https:// or s3:// URI, within the server's allow lists")
    id: str | None = Field(None, description="your id for the video, echoed in each record")
    sampling: SamplingSpec | None = Field(
        None, description="which frames to label, as a job's input.sampling (default: the "
                          "server's video_sampling)")
    clip: ClipSpec | None = Field(
        None, description="how a clip task's model cuts the video, as a job's input.clip "
                          "(default: the server's video_clip)")
    track: TrackingSpec | bool | None = Field(
        None, description="how boxes are linked into tracks, as a job task's `track`; true or "
                          "absent: the served model's settings, false: not linked")


# Multipart file fields besides the main one: read into the field as base64, the form a JSON
# body carries them in.
_EXTRA_FILE_FIELDS = ("example_image",)
# Multipart form fields that hold JSON (a list or an object; `track` also true / false).
_JSON_FORM_FIELDS = ("tasks", "sampling", "clip", "track", "examples", "fuse")


def _form_labels(values: list) -> list[str] | None:
    texts = [v for v in values if isinstance(v, str)]
    if not texts:
        return None
    if len(texts) == 1:
        text = texts[0].strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except (json.JSONDecodeError, RecursionError) as err:
                raise ApiError(422, f"labels: not a valid JSON list: {err}") from None
        return [label.strip() for label in text.split(",") if label.strip()]
    return texts


async def parse_request(request: Request, model: type[BaseModel], max_bytes: int,
                        idle_s: float, file_field: str = "image"
                        ) -> tuple[BaseModel, bytes | None, str | None]:
    """-> (validated request, uploaded file bytes or None, uploaded file name or None);
    max_bytes, idle_s: read_body's limits; file_field: the multipart field with the file."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes, idle_s)
    upload, filename = None, None
    if content_type == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as err:  # noqa: BLE001 - python-multipart raises several types
            # Starlette wraps the parser's message in an HTTPException ("400: ..."): its detail.
            raise ApiError(400, f"malformed multipart body: "
                                f"{getattr(err, 'detail', None) or err}") from None
        fields: dict = {}
        for key in form:
            values = form.getlist(key)
            if len(values) > 1 and key != "labels":
                # Only the first would be used: a second image or threshold silently ignored.
                raise ApiError(422, f"{key}: sent {len(values)} times; send it once (only "
                                    f"labels may repeat; one {file_field} per request)")
            if key == file_field and isinstance(values[0], UploadFile):
                upload, filename = await values[0].read(), values[0].filename
            elif key in _EXTRA_FILE_FIELDS and isinstance(values[0], UploadFile):
                fields[key] = base64.b64encode(await values[0].read()).decode()
            elif key == "labels":
                fields["labels"] = _form_labels(values)
            elif key in _JSON_FORM_FIELDS:
                try:
                    fields[key] = json.loads(values[0])
                except (json.JSONDecodeError, RecursionError) as err:
                    raise ApiError(422, f"{key}: not valid JSON: {err}") from None
            else:
                fields[key] = values[0]
    elif content_type in ("application/json", ""):
        if not body.strip():
            raise ApiError(422, f"empty body: send JSON with `{file_field}` (base64) or `uri`, "
                                f"or a multipart form with the file in field `{file_field}`")
        try:
            fields = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ApiError(400, f"malformed JSON body: {err}") from None
        if not isinstance(fields, dict):
            raise ApiError(422, "the JSON body must be an object")
    else:
        raise ApiError(415, f"unsupported content type {content_type!r}; send application/json "
                            f"or multipart/form-data")
    # Parsed: the raw body (cached on the request for Starlette's form parser) is not held
    # while the request is served, a video's worth of memory per request.
    del body
    request._body = b""
    try:
        parsed = model.model_validate(fields)
    except ValidationError as err:
        raise ApiError(422, format_validation_error(err, model).replace(
            "invalid job spec", "invalid request")) from None
    return parsed, upload, filename


def image_bytes_or_uri(req: ImageSource, upload: bytes | None) -> tuple[bytes | None, str | None]:
    """(bytes, None) for an upload or base64, (None, uri) for a uri; 422 unless exactly one."""
    return bytes_or_uri(req.image, req.uri, upload, "image")


def bytes_or_uri(encoded: str | None, uri: str | None, upload: bytes | None,
                 field: str) -> tuple[bytes | None, str | None]:
    """The one source of a request's `field` (image or video): (bytes, None) for an upload
    or base64 in `field`, (None, uri) for a uri; 422 unless exactly one is given."""
    given = [name for name, value in ((f"multipart file `{field}`", upload),
                                      (f"base64 `{field}`", encoded), ("`uri`", uri))
             if value is not None]
    if not given:
        raise ApiError(422, f"missing {field}: send a multipart file field `{field}`, "
                            f"JSON `{field}` (base64) or `uri`")
    if len(given) > 1:
        raise ApiError(422, f"give exactly one {field} source, got {' and '.join(given)}")
    if upload is not None:
        return upload, None
    if uri is not None:
        return None, uri
    return decode_base64(encoded, field), None


def decode_base64(text: str, field: str = "image") -> bytes:
    """Base64 (standard or URL-safe alphabet, a data: URL prefix allowed) -> bytes; 422
    naming `field`."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ApiError(422, f"{field}: a data: URL must be base64-encoded "
                                f"(data:...;base64,...)")
    # Each rewrite copies the text (a video's is hundreds of MB): only when needed.
    if any(space in text for space in " \n\r\t"):
        text = "".join(text.split())
    if "-" in text or "_" in text:  # the URL-safe alphabet
        text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ApiError(422, f"{field} is not valid base64: {err}") from None


def check_example_boxes(examples: tuple, width: int, height: int, where: str = "") -> None:
    """422 naming the first of `examples` (labeler.models.base.Example) whose box is not a
    box inside the width x height image: x0 < x1, y0 < y1, all within the image."""
    for i, example in enumerate(examples):
        if not box_fits(example.box, width, height):
            raise ApiError(422, f"{where}examples.{i}.box: {list(example.box)} is not a box "
                                f"inside the {width}x{height} image (x0 < x1, y0 < y1, pixels)")
