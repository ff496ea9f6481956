"""The Ray Serve application: a FastAPI ingress in front of one deployment per model.

    POST /v1/detect /v1/ground /v1/caption /v1/ocr /v1/ask   one image, one task -> record
    POST /v1/detect-by-example                               more objects like the query
                                                             image, or like boxes drawn in
                                                             the image (`examples`)
    POST /v1/pseudo-label                                    OWL-ST boxes from a caption
    POST /v1/annotate                                        one image, several tasks -> records
                                                             (`fuse`: their boxes fused too)
    POST /v1/video                                           one video, one model -> a record
                                                             per sampled frame, boxes in tracks
    GET  /v1/models  /healthz  /readyz  /docs
    POST /predict /setup, GET /health                        Label Studio ML backend
    ?format=cvat on the task endpoints                       CVAT detector shapes

The ingress authenticates, parses and validates the request (parameters through the same
TaskSpec checks as a job), fetches and decodes the image (the same decode_image call and
limits as a job), and hands the pixels to the model deployment (labeler.serve.model), which
batches requests. A video is decoded and linked as a batch video job does it
(labeler.serve.video), its frames sent to the deployment as they decode. Errors are JSON
`{"error": "..."}` with a 4xx status for the caller's mistakes, 503 / 504 for load, never a hang.
"""

# No `from __future__ import annotations`: Serve's class-based FastAPI routes need the
# annotations (Request) as objects to tell the request apart from query parameters.
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from labeler import registry
from labeler.config import (TRACKED_TASKS, ClipSpec, TrackingSpec, decode_side_for_tasks,
                            format_validation_error)
from labeler.export.rows import BOX_TASKS
from labeler.fusion.records import (FUSED_KINDS, FusionSpec, RecordFuser, distinct_names,
                                    fused_kind)
from labeler.fusion.wbf import FusionCount
from labeler.media.image import MediaError, decode_image, header_pixels
from labeler.models.base import Example, ExampleImage
from labeler.schemas import Record
from labeler.serve.auth import is_authorized
from labeler.serve.config import ServedModel, ServeSpec
from labeler.serve.errors import ApiError
from labeler.serve.fetch import (LABEL_STUDIO_KEY_ENV, LABEL_STUDIO_URL_ENV, check_uri,
                                 fetch_label_studio_file, fetch_uri, s3_object_size)
from labeler.serve.formats import (cvat_shapes, drawn_rectangles, label_studio_prediction,
                                   model_version, parse_label_config, percent_to_pixels)
from labeler.serve.inputs import (AnnotateRequest, ExampleBox, ImageRequest, Params,
                                  VideoRequest, bytes_or_uri, check_example_boxes, decode_base64,
                                  image_bytes_or_uri, parse_request)
from labeler.serve.limits import RETRY_AFTER_S, PixelBudget, call_with_limits, read_body
from labeler.serve.model import Item, ModelServer
from labeler.serve.variants import variant_spec
from labeler.serve.video import (LabeledVideo, label_studio_video_prediction, label_video,
                                 link_records, position_fields, video_clip, video_track)
from labeler.storage import forwards_credentials, worker_env

log = logging.getLogger(__name__)

# Seconds /readyz waits for each model deployment to answer before calling it not ready.
READY_TIMEOUT_S = 5.0
# Tasks with an endpoint of their own, /v1/<task>; every served task is reachable through
# /v1/annotate.
ENDPOINT_TASKS = ("detect", "ground", "detect-by-example", "caption", "ocr", "ask",
                  "pseudo-label")
# Label Studio projects whose labeling config /setup remembers (ingress memory only).
MAX_PROJECTS = 256
# The pixels of a video's error row, which reaches the model deployment only for its record.
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)
# Seconds a video request refused for load is asked to wait: one takes seconds to minutes.
VIDEO_RETRY_AFTER_S = 5

class ErrorBody(BaseModel):
    """Every error answer's body, whatever its status."""

    error: str = Field(description="what went wrong, naming the field or limit concerned")


# Statuses a request may get besides 200, each with ErrorBody (FastAPI would document 422
# as its own {"detail": [...]}, which this server never sends).
_ERROR_DOC = {status: {"model": ErrorBody, "description": meaning} for status, meaning in (
    (400, "malformed body (JSON, multipart)"), (401, "missing or wrong token"),
    (403, "a uri the server may not fetch"), (404, "unknown model, task or path"),
    (408, "the body stalled"), (413, "body, image or video over the server's limits"),
    (415, "unsupported content type"), (422, "invalid request, or an image or video that "
                                              "cannot be used"),
    (502, "a uri's server (https, S3, Label Studio) failed or refused the connection"),
    (503, "the model's queue is full (Retry-After)"),
    (504, "the model, or a uri's server, did not answer in time"))}

api = FastAPI(
    title="labeler online API",
    description="Pre-labels an image, or a video's frames, with the batch job's models; "
                "answers with the same records as its Parquet rows. Send `Authorization: "
                "Bearer <token>` when the server has tokens.",
    version="1",
)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(_: Request, err: ApiError) -> JSONResponse:
    return _error(err.status, err.message, err.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return _error(err.status_code, str(err.detail), getattr(err, "headers", None))


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, err: Exception) -> JSONResponse:
    """A fault of the server's own: still the JSON every answer has (Starlette answered
    plain-text "Internal Server Error"); the traceback goes to the log."""
    log.exception("unhandled error")
    return _error(500, f"internal server error: {type(err).__name__}")


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
    return _error(422, f"invalid request: {where}")


# Tasks whose records hold text and no scored boxes: a request's `threshold` has no use.
TEXT_ONLY_TASKS = ("caption", "ocr", "ask", "video-caption", "video-ask")
# Tasks whose records' `text` is about the whole image: a TextArea not per region takes it.
WHOLE_IMAGE_TEXT_TASKS = ("caption", "ask", "ocr")

# The module's functions that Ingress calls are defined before it: a replica built from the
# class decorated by serve.ingress did not find one defined after it (NameError).
def _fills_label_config(task: str, config) -> bool:
    """Whether a task's records fill a control of an image label_config
    (labeler.serve.formats.label_studio_prediction: boxes, OCR lines, or a whole-image
    TextArea's text)."""
    return bool((config.rectangle and task in BOX_TASKS)
                or ((config.polygon or (config.textarea and config.textarea_per_region))
                    and task == "ocr")
                or (config.textarea and not config.textarea_per_region
                    and task in WHOLE_IMAGE_TEXT_TASKS))


# Labels one request may ask for, and characters in one of its texts (a label, prompt or
# caption). A model encodes all of a request's queries at once and scores every box against
# each (OWLv2: a (patches x queries) matrix per image), and a generative model attends over
# all of a prompt's tokens: 10^5 labels or a prompt of megabytes, well within the body limit,
# would hold a replica for minutes or run it out of memory, for every caller.
MAX_REQUEST_LABELS = 1000
MAX_REQUEST_TEXT_CHARS = 10_000


def _check_request_size(params: Params) -> None:
    """422 for a request's labels or texts past the limits above."""
    if params.labels is not None and len(params.labels) > MAX_REQUEST_LABELS:
        raise ApiError(422, f"labels: {len(params.labels)} labels, over the limit of "
                            f"{MAX_REQUEST_LABELS} per request")
    texts = [("labels", label) for label in params.labels or ()]
    texts += [(name, getattr(params, name)) for name in ("prompt", "caption")]
    for name, text in texts:
        if text is not None and len(text) > MAX_REQUEST_TEXT_CHARS:
            raise ApiError(422, f"{name}: a text of {len(text)} characters, over the limit "
                                f"of {MAX_REQUEST_TEXT_CHARS}")


def _ls_task_kind(config) -> str | None:
    """The task whose records fill a Label Studio config: boxes for a RectangleLabels or a
    VideoRectangle, OCR for a Polygon or a per-region TextArea, a caption for a TextArea
    about the whole image; None for none of them."""
    if config.rectangle or config.video_rectangle:
        return "detect"
    if config.polygon or (config.textarea and config.textarea_per_region):
        return "ocr"
    return "caption" if config.textarea else None


def _in_flight_limit(served) -> int:
    """Tasks of one Label Studio request sent to a model at once: what its replicas hold,
    and no more than its queue takes (a request waits in the queue until a replica takes
    it). Label Studio sends every selected task in one request; sent all at once, hundreds
    overflowed the model's queue and the whole request failed with 503."""
    serving = served.serving
    replicas = (serving.autoscaling.max_replicas if serving.autoscaling is not None
                else serving.num_replicas)
    return max(1, min(served.ongoing_limit * replicas, serving.max_queued_requests))


async def _bounded_gather(coroutines: list, limit: int) -> list:
    """asyncio.gather of `coroutines`, at most `limit` running at once; results in order."""
    slots = asyncio.Semaphore(limit)

    async def bounded(coroutine):
        async with slots:
            return await coroutine

    return await asyncio.gather(*(bounded(c) for c in coroutines))


# Serve's deployment statuses that mean a model cannot answer (UPDATING, UPSCALING and
# DOWNSCALING deployments still serve); None: the deployment is gone.
NOT_READY_STATUSES = (None, "UNHEALTHY", "DEPLOY_FAILED")


def _deployment_status(deployment: str) -> str | None:
    """Serve's status of a deployment of this replica's application (HEALTHY, UPSCALING,
    UNHEALTHY, ...), from the controller: no request reaches the deployment's replicas."""
    application = serve.status().applications.get(serve.get_replica_context().app_name)
    found = application.deployments.get(deployment) if application is not None else None
    return None if found is None else str(getattr(found.status, "value", found.status))


def _record_fuser(spec: FusionSpec, sources: list[ServedModel]) -> RecordFuser:
    """The fuser of an /v1/annotate request's records (labeler.fusion.records, as `labeler
    fuse` fuses a job's tasks); 422 naming the field when the tasks cannot be fused. A
    source is named by its model, the second entry of one model `name#2`, and so on."""
    if len(sources) < 2:
        raise ApiError(422, "fuse: fusing needs at least two entries in tasks")
    for i, served in enumerate(sources):
        if served.task not in FUSED_KINDS:
            raise ApiError(422, f"fuse: tasks.{i} is a {served.task} task; fuse takes tasks "
                                f"whose records hold boxes: {', '.join(FUSED_KINDS)}")
    names = distinct_names([served.served_name for served in sources])
    try:
        return RecordFuser(names, spec, fused_kind([s.task for s in sources]), "fused")
    except ValueError as err:
        raise ApiError(422, f"fuse.{err}") from None


def _body_doc(model, file_field: str = "image") -> dict:
    """OpenAPI requestBody for endpoints that parse their body themselves (JSON, or a form
    with the file in `file_field`)."""
    form = {"type": "object", "properties": {
        file_field: {"type": "string", "format": "binary"},
        **{k: {"type": "string"} for k in model.model_fields if k != file_field}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inlined(model.model_json_schema())},
        "multipart/form-data": {"schema": form}}}}


def _inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its nested models ($defs) written in place of their
    $refs: the schema sits inside the OpenAPI document, where "#/$defs/..." would not
    resolve (the models are not recursive)."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


_RECORD_DOC = {200: {"model": Record, "description": "the record, as a Parquet row of a batch "
                                                      "job; a list of shapes with ?format=cvat"},
               **_ERROR_DOC}


@serve.ingress(api)
class Ingress:
    """spec_json: the ServeSpec as JSON; tokens: the API tokens (empty: open, loopback);
    handles: served model name -> its deployment."""

    def __init__(self, spec_json: str, tokens: list[str], handles: dict[str, DeploymentHandle]):
        self.spec = ServeSpec.model_validate_json(spec_json)
        self.tokens = tokens
        self.handles = handles
        self.label_configs: dict[str, str] = {}
        self.ready_models: dict[str, dict] = {}  # each model's first answer to `ready`
        self.videos_running = 0
        self.decoding = PixelBudget(self.spec.limits.max_decoding_pixels)

    # -- plumbing -------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if not is_authorized(request.headers.get("authorization"), self.tokens):
            raise ApiError(401, "missing or invalid API token: send Authorization: Bearer <token>",
                           {"WWW-Authenticate": "Bearer"})

    def _served_for(self, task: str | None, name: str | None) -> ServedModel:
        """The served model by name, else the first one doing `task`; 404 / 422 otherwise."""
        served_list = ", ".join(f"{m.served_name} ({m.task})" for m in self.spec.models)
        if name is not None:
            served = self.spec.model(name)
            if served is None:
                raise ApiError(404, f"unknown model {name!r}; served models: {served_list}")
            if task is not None and served.task != task:
                raise ApiError(422, f"model {name!r} does task {served.task!r}, not {task!r}")
            return served
        if task is None:
            raise ApiError(422, "name a `model` or a `task`")
        if task not in registry.TASKS:
            raise ApiError(404, f"unknown task {task!r}; valid tasks: {', '.join(registry.TASKS)}")
        served = next((m for m in self.spec.models if m.task == task), None)
        if served is None:
            raise ApiError(404, f"no served model does task {task!r}; served models: {served_list}")
        return served

    @staticmethod
    def _image_model(served: ServedModel) -> ServedModel:
        """`served`, unless its task labels video clips (422: send the video instead)."""
        if served.takes_clips:
            raise ApiError(422, f"model {served.served_name!r} does task {served.task!r}, "
                                f"which labels video clips: POST the video to /v1/video")
        return served

    def _item_params(self, served: ServedModel, params: Params) -> dict:
        """Per-request parameters checked as a job spec would be (422 naming the field)."""
        _check_request_size(params)
        try:
            variant_spec(served, params.labels, params.threshold, params.prompt)
        except ValidationError as err:
            raise ApiError(422, format_validation_error(err).replace(
                "invalid job spec", f"invalid parameters for model {served.served_name!r}")) from None
        if params.threshold is not None and served.task in TEXT_ONLY_TASKS:
            raise ApiError(422, f"threshold: model {served.served_name!r} does task "
                                f"{served.task!r}, whose records hold no scored boxes")
        if params.caption is not None and served.task != "pseudo-label":
            raise ApiError(422, f"caption: model {served.served_name!r} does task "
                                f"{served.task!r}, which takes no caption (pseudo-label does)")
        if params.caption is not None and not served.pseudo_label.use_captions:
            # Silently dropping it would answer a different question than was asked.
            raise ApiError(422, f"caption: model {served.served_name!r} is served with "
                                "pseudo_label.use_captions: false (vocabulary only), so it "
                                "takes no caption")
        return {"labels": tuple(label.strip() for label in params.labels) if params.labels else None,
                "threshold": params.threshold, "prompt": params.prompt,
                "caption": params.caption, "examples": self._examples(served, params)}

    @staticmethod
    def _examples(served: ServedModel, params: Params) -> tuple[Example, ...]:
        """The request's drawn boxes, for a model that takes them (422 otherwise); boxes are
        checked against the image once it is decoded (check_example_boxes)."""
        name = served.served_name
        if params.examples is None:
            if served.examples_per_request:
                raise ApiError(422, f"examples: model {name!r} has no query_image, so each "
                                    f"request brings the boxes to find more of: `examples`: "
                                    f"[{{\"label\": ..., \"box\": [x0, y0, x1, y1]}}]")
            return ()
        if served.task != "detect-by-example":
            raise ApiError(422, f"examples: model {name!r} does task {served.task!r}; boxes to "
                                f"find more of are for task 'detect-by-example'")
        if served.tiles is not None:
            raise ApiError(422, f"examples: model {name!r} is tiled, and examples are drawn "
                                f"on the whole image")
        return tuple(Example(ex.label, ex.box) for ex in params.examples)

    async def _image(self, data: bytes | None, uri: str | None,
                     served: list[ServedModel]) -> tuple[object, float]:
        """(DecodedImage, decode ms) from bytes or a uri, under the server's limits, decoded
        as a job of the `served` models' tasks would decode it (decode_side_for_tasks)."""
        limits = self.spec.limits
        if data is None:
            data = await asyncio.to_thread(fetch_uri, uri, self.spec.uri, limits.max_body_bytes)
        pixels = header_pixels(data) or 0
        # An image over max_pixels is refused from its header: it need not wait its turn.
        async with self.decoding.hold(pixels if pixels <= limits.max_pixels else 0):
            start = time.perf_counter()
            side = decode_side_for_tasks(limits.decode_min_side, served,
                                         "decode_min_side" in limits.model_fields_set)
            decoding = asyncio.ensure_future(
                asyncio.to_thread(decode_image, data, limits.max_pixels, side))
            try:
                decoded = await asyncio.shield(decoding)
            except asyncio.CancelledError:
                # A client that went away: its thread decodes on, and its pixels stay
                # counted until it ends (or dropped requests would decode over the budget).
                await asyncio.wait([decoding])
                if not decoding.cancelled():
                    decoding.exception()  # retrieved: no "never retrieved" warning
                raise
            except MediaError as err:
                raise ApiError(422, f"image cannot be used: {err}") from None
            decode_ms = (time.perf_counter() - start) * 1000.0
        height, width = decoded.pixels.shape[:2]
        for model in served:  # before the image reaches a replica that cannot take it
            refusal = registry.input_refusal(model, width, height, limits.max_pixels)
            if refusal is not None:
                raise ApiError(422, f"image cannot be used by model {model.served_name!r}: "
                                    f"{refusal}")
        return decoded, decode_ms

    async def _drawn_on(self, params: dict, request: Params, served: ServedModel, decoded,
                        where: str = "") -> dict:
        """`params` with the request's example image (None: examples are drawn on the image
        itself, `decoded`), its example boxes checked against the image they are drawn on
        (422)."""
        example = await self._example_image(request, served, where)
        size = (example or decoded).width, (example or decoded).height
        check_example_boxes(params["examples"], *size, where)
        return {**params, "example_image": example}

    async def _example_image(self, request: Params, served: ServedModel,
                             where: str) -> ExampleImage | None:
        """The image a request's examples are drawn on, when it sends one (example_image or
        example_uri), fetched and decoded as its image is; keyed by a hash of its bytes."""
        encoded, uri = request.example_image, request.example_uri
        if encoded is None and uri is None:
            return None
        if encoded is not None and uri is not None:
            raise ApiError(422, f"{where}example_image: give it or example_uri, not both")
        if request.examples is None:
            raise ApiError(422, f"{where}example_image: send the `examples` drawn on it")
        try:
            data = (decode_base64(encoded, "the file") if encoded is not None else
                    await asyncio.to_thread(fetch_uri, uri, self.spec.uri,
                                            self.spec.limits.max_body_bytes))
            decoded, _ = await self._image(data, None, [served])
        except ApiError as err:
            raise ApiError(err.status, f"{where}example_image: {err.message}") from None
        return ExampleImage(f"sha256:{hashlib.sha256(data).hexdigest()}", decoded.pixels,
                            decoded.width, decoded.height)

    async def _run(self, served: ServedModel, decoded, decode_ms: float, item_id: str,
                   uri: str, params: dict) -> dict:
        """The record of one decoded image (params: _item_params' of a request whose
        example boxes were checked against it)."""
        item = Item(id=item_id, uri=uri, pixels=decoded.pixels, width=decoded.width,
                    height=decoded.height, decode_ms=decode_ms, **params)
        return await self._annotate(served, item)

    async def _annotate(self, served: ServedModel, item: Item) -> dict:
        response = self.handles[served.served_name].annotate.remote(item)
        record = await call_with_limits(response, served.serving.request_timeout_s,
                                        served.served_name)
        return Record.model_validate(record).model_dump(mode="json")

    async def _one(self, request: Request, task: str | None, fmt: str):
        self._authorize(request)
        if fmt not in ("record", "cvat"):
            raise ApiError(422, f"unknown format {fmt!r}; valid: record, cvat")
        limits = self.spec.limits
        req, upload, filename = await parse_request(request, ImageRequest, limits.max_body_bytes,
                                                    limits.body_idle_timeout_s)
        served = self._image_model(self._served_for(task, req.model))
        params = self._item_params(served, req)
        data, uri = image_bytes_or_uri(req, upload)
        decoded, decode_ms = await self._image(data, uri, [served])
        params = await self._drawn_on(params, req, served, decoded)
        source = uri or (f"upload:{filename}" if upload is not None else "base64")
        record = await self._run(served, decoded, decode_ms, req.id or uuid.uuid4().hex,
                                 source, params)
        if record["error"]:
            return JSONResponse(record, status_code=500)
        return cvat_shapes(record) if fmt == "cvat" else record

    # -- task endpoints -------------------------------------------------------------------

    @api.post("/v1/detect", responses=_RECORD_DOC, openapi_extra=_body_doc(ImageRequest))
    async def detect(self, request: Request, format: str = "record"):
        """Boxes for class names (`labels`) with scores over `threshold`."""
        return await self._one(request, "detect", format)

    @api.post("/v1/ground", responses=_RECORD_DOC, openapi_extra=_body_doc(ImageRequest))
    async def ground(self, request: Request, format: str = "record"):
        """Boxes for the phrases of `prompt`."""
        return await self._one(request, "ground", format)

    @api.post("/v1/detect-by-example", responses=_RECORD_DOC,
              openapi_extra=_body_doc(ImageRequest))
    async def detect_by_example(self, request: Request, format: str = "record"):
        """Boxes of objects like the served query image, or like the boxes drawn in this
        image (`examples`: [{"label", "box": [x0, y0, x1, y1]}], a query per label)."""
        return await self._one(request, "detect-by-example", format)

    @api.post("/v1/caption", responses=_RECORD_DOC, openapi_extra=_body_doc(ImageRequest))
    async def caption(self, request: Request, format: str = "record"):
        """A caption in `text`; `prompt` replaces the model's default instruction."""
        return await self._one(request, "caption", format)

    @api.post("/v1/ocr", responses=_RECORD_DOC, openapi_extra=_body_doc(ImageRequest))
    async def ocr(self, request: Request, format: str = "record"):
        """Text in `text`, and `ocr_regions` (quadrilaterals) for models that give them."""
        return await self._one(request, "ocr", format)

    @api.post("/v1/ask", responses=_RECORD_DOC, openapi_extra=_body_doc(ImageRequest))
    async def ask(self, request: Request, format: str = "record"):
        """The answer to the question in `prompt`, in `text`."""
        return await self._one(request, "ask", format)

    @api.post("/v1/pseudo-label", responses=_RECORD_DOC, openapi_extra=_body_doc(ImageRequest))
    async def pseudo_label(self, request: Request, format: str = "record"):
        """OWL-ST pseudo-labels: boxes for the phrases of `caption` and the served
        vocabulary, over `threshold`; `kept` / `filter_reason` say whether the image passes
        the image threshold."""
        return await self._one(request, "pseudo-label", format)

    @api.post("/v1/annotate", responses=_ERROR_DOC, openapi_extra=_body_doc(AnnotateRequest))
    async def annotate(self, request: Request):
        """One image, several tasks: {"records": [one record per entry of `tasks`]}; with
        `fuse`, also "fused": the box tasks' records fused into one, as `labeler fuse` fuses
        a job's tasks."""
        self._authorize(request)
        limits = self.spec.limits
        req, upload, filename = await parse_request(request, AnnotateRequest,
                                                    limits.max_body_bytes,
                                                    limits.body_idle_timeout_s)
        plan = []
        for i, entry in enumerate(req.tasks):
            try:
                served = self._image_model(self._served_for(entry.task, entry.model))
                plan.append((served, self._item_params(served, entry)))
            except ApiError as err:
                raise ApiError(err.status, f"tasks.{i}: {err.message}") from None
        fuser = None if req.fuse is None else _record_fuser(req.fuse, [s for s, _ in plan])
        data, uri = image_bytes_or_uri(req, upload)
        decoded, decode_ms = await self._image(data, uri, [served for served, _ in plan])
        plan = [(served, await self._drawn_on(params, entry, served, decoded, f"tasks.{i}."))
                for i, ((served, params), entry) in enumerate(zip(plan, req.tasks))]
        source = uri or (f"upload:{filename}" if upload is not None else "base64")
        item_id = req.id or uuid.uuid4().hex
        records = await asyncio.gather(*(self._run(served, decoded, decode_ms, item_id, source,
                                                   params) for served, params in plan))
        status = 500 if any(r["error"] for r in records) else 200
        body = {"records": records}
        if fuser is not None:
            body["fused"] = fuser.record(records, FusionCount())
        return JSONResponse(body, status_code=status)

    @api.post("/v1/video", responses=_ERROR_DOC,
              openapi_extra=_body_doc(VideoRequest, file_field="video"))
    async def video(self, request: Request):
        """One video, one model: a record per sampled frame (`sampling`, default the
        server's video_sampling), or per clip for video-caption and video-ask (`clip`,
        default the server's video_clip), as a batch video job writes them; boxes of
        detect, ground and detect-by-example linked into tracks (`track_id`). {"id",
        "frames", "clips", "selected_frames", "unchanged_frames", "tracks", "records"}; a
        video that stops decoding part way: 422 with the records of the rows before."""
        self._authorize(request)
        limits = self.spec.limits
        req, upload, filename = await parse_request(request, VideoRequest,
                                                    limits.max_video_bytes,
                                                    limits.body_idle_timeout_s,
                                                    file_field="video")
        if req.task is None and req.model is None and len(self.spec.models) == 1:
            served = self.spec.models[0]  # the one model served need not be named
        else:
            served = self._served_for(req.task, req.model)
        drawn_on_image = req.example_image is not None or req.example_uri is not None
        if (req.examples is not None or served.examples_per_request) and not drawn_on_image:
            without = (f" (model {served.served_name!r} has no query_image)"
                       if served.examples_per_request else "")
            raise ApiError(422, f"examples: a video's examples are boxes drawn on an image (a "
                                f"frame of it, say): send it as example_image or example_uri, "
                                f"with the `examples` drawn on it{without}")
        params = self._item_params(served, req)
        if drawn_on_image:
            params = await self._drawn_on(params, req, served, None)
            # Every frame's request carries the example image: as a reference to one copy in
            # the object store (the model deployment resolves it), not its pixels each time.
            example = params["example_image"]
            params["example_image"] = dataclasses.replace(example, pixels=ray.put(example.pixels))
        track = video_track(served, req.track)
        clip = video_clip(served, req.clip, req.sampling is not None, self.spec.video_clip)
        data, uri = bytes_or_uri(req.video, req.uri, upload, "video")
        # Decoded: the base64 text (4/3 of the video) is not held while the video is labeled.
        req = req.model_copy(update={"video": None})
        source = uri or (f"upload:{filename}" if upload is not None else "base64")
        sampling = (req.sampling or self.spec.video_sampling).sampling()
        with self._video_slot():
            if data is None:
                data = await self._video_at(uri)
            video = await self._video(served, data, sampling, clip, track,
                                      req.id or uuid.uuid4().hex, source, params)
        body = {"id": video.records[0]["id"],
                "frames": sum(r["frame_index"] is not None for r in video.records),
                "clips": sum(r["clip_start_s"] is not None for r in video.records),
                "selected_frames": video.selected, "unchanged_frames": video.unchanged,
                "tracks": video.tracks, "records": video.records}
        if video.error:
            return JSONResponse({"error": f"video cannot be used: {video.error}", **body},
                                status_code=422)
        if any(r["error"] for r in video.records):
            return JSONResponse(body, status_code=500)
        return body

    @contextlib.contextmanager
    def _video_slot(self):
        """One of the limits.max_video_requests this ingress runs at once, held while the
        video is fetched, decoded and labeled; 503 with Retry-After when all are taken,
        before any of that work (a video refused half way would waste it)."""
        limit = self.spec.limits.max_video_requests
        if self.videos_running >= limit:
            raise ApiError(503, f"{limit} video requests are running, this server's limit "
                                f"(limits.max_video_requests); retry in {VIDEO_RETRY_AFTER_S} s",
                           {"Retry-After": str(VIDEO_RETRY_AFTER_S)})
        self.videos_running += 1  # no await since the check: no other request ran between
        try:
            yield
        finally:
            self.videos_running -= 1

    async def _video_at(self, uri: str) -> bytes | str:
        """What a video request's `uri` gives video_rows: an s3:// URI as it is, read by
        range as a job reads it (never held whole past VIDEO_READ_WHOLE_BYTES, so
        max_video_bytes does not apply), an https one's bytes, fetched under
        max_video_bytes. 403 / 422 for a URI the server may not fetch, 502 / 504 when its
        server fails."""
        if check_uri(uri, self.spec.uri)[0] == "s3":
            # Asked first, so that a store that fails is a 502, not a video that cannot
            # be used (422).
            await asyncio.to_thread(s3_object_size, uri)
            return uri
        return await asyncio.to_thread(fetch_uri, uri, self.spec.uri,
                                       self.spec.limits.max_video_bytes, "video")

    async def _video(self, served: ServedModel, data: bytes | str, sampling,
                     clip: ClipSpec | None,
                     track: TrackingSpec | None, video_id: str, source: str,
                     params: dict) -> LabeledVideo:
        """The video's records (labeler.serve.video.label_video), linked when `track`."""
        async def frame(row) -> dict:
            item = Item(id=video_id, uri=source,
                        pixels=NO_PIXELS if row.images is None else row.images["image"],
                        width=row.width, height=row.height, decode_ms=row.decode_ms,
                        error=row.error or None, **params)
            return {**await self._annotate(served, item), **position_fields(row)}

        limits = self.spec.limits
        # One replica's worth of requests at once: its batches running and the next one filling.
        video = await label_video(data, sampling, clip, limits.max_pixels,
                                  limits.max_video_frames, frame, served.ongoing_limit)
        return video if track is None else await asyncio.to_thread(link_records, video, track)

    @api.post("/v1/{task}", include_in_schema=False)
    async def unknown_task(self, task: str, request: Request):
        self._authorize(request)
        endpoints = ", ".join(f"/v1/{t}" for t in ENDPOINT_TASKS + ("annotate", "video"))
        raise ApiError(404, f"unknown task {task!r}; endpoints: {endpoints}")

    # -- service --------------------------------------------------------------------------

    @api.get("/v1/models")
    async def models(self, request: Request):
        """What is served: name, task, model, default parameters and batching."""
        self._authorize(request)
        return {"models": [{
            "name": m.served_name, "task": m.task, "family": m.model.family,
            "source": m.model.source, "revision": m.model.revision, "labels": m.labels,
            "labels_per_request": m.labels_per_request,
            "query_image": m.query_image, "examples_per_request": m.examples_per_request,
            "threshold": m.threshold, "prompt": m.prompt,
            "queries": m.queries, "label_thresholds": m.label_thresholds,
            "templates": m.templates,
            "nms": m.nms, "nms_threshold": m.nms_threshold, "max_detections": m.max_detections,
            "tiles": m.tiles.model_dump(mode="json") if m.tiles else None,
            "video_track": m.video_track.model_dump() if m.video_track else None,
            "serving": m.serving.model_dump(),
            "endpoint": ("/v1/video" if m.takes_clips else
                         f"/v1/{m.task}" if m.task in ENDPOINT_TASKS else "/v1/annotate"),
        } for m in self.spec.models]}

    @api.get("/healthz")
    async def healthz(self):
        """The ingress is up (says nothing about the models: see /readyz)."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self):
        """200 once every model deployment has loaded its model and answers; else 503."""
        names = list(self.handles)
        results = await asyncio.gather(*(self._model_ready(n) for n in names),
                                       return_exceptions=True)
        status = {n: (r if not isinstance(r, BaseException) else f"not ready: {type(r).__name__}")
                  for n, r in zip(names, results)}
        if any(isinstance(r, BaseException) for r in results):
            return JSONResponse({"ready": False, "models": status}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        return {"ready": True, "models": status}

    async def _model_ready(self, name: str) -> dict:
        """A model's readiness: until it has answered once, a `ready` call to it (its model
        loaded); after that, Serve's health of its deployment, asked of the controller. A
        `ready` call waits for a free slot like any request, so a model busy with a full
        batch or queue read as not ready exactly under load, and a readiness probe took
        the server out of rotation when it was needed most."""
        answer = self.ready_models.get(name)
        if answer is None:
            answer = await asyncio.wait_for(self.handles[name].ready.remote(), READY_TIMEOUT_S)
            self.ready_models[name] = answer
            return answer
        status = await asyncio.wait_for(asyncio.to_thread(_deployment_status,
                                                          f"model-{name}"), READY_TIMEOUT_S)
        if status in NOT_READY_STATUSES:
            raise RuntimeError(status)
        return answer

    # -- Label Studio ML backend ----------------------------------------------------------

    @api.get("/health")
    async def ls_health(self):
        """Label Studio's health probe."""
        return {"status": "UP", "model_class": "labeler"}

    @api.post("/setup", responses=_ERROR_DOC)
    async def ls_setup(self, request: Request, model: str | None = None):
        """Label Studio connects a project: remember its labeling config, and answer the
        version of the model /predict will use for it (Label Studio compares it with its
        predictions' to know which tasks it has predicted already)."""
        self._authorize(request)
        body = await self._json_object(request)
        schema = body.get("schema") or body.get("label_config")
        served = self.spec.models[0]
        if isinstance(schema, str):
            try:
                config = parse_label_config(schema)
            except ValueError as err:
                raise ApiError(422, str(err)) from None
            if len(self.label_configs) >= MAX_PROJECTS:
                self.label_configs.pop(next(iter(self.label_configs)))
            self.label_configs[str(body.get("project", ""))] = schema
            wanted = _ls_task_kind(config)
            if model is not None or wanted is not None:
                served = self._served_for(wanted if model is None else None, model)
        return {"model_version": model_version(served.model.family, served.model.source,
                                               served.model.revision)}

    @api.post("/webhook", responses=_ERROR_DOC)
    async def ls_webhook(self, request: Request):
        """Label Studio's training webhooks (annotation created, "Start Training"): these
        models are not trained from annotations; acknowledged so Label Studio shows no
        error."""
        self._authorize(request)
        return {"status": "ok", "trained": False}

    @api.post("/predict", responses=_ERROR_DOC)
    async def ls_predict(self, request: Request, model: str | None = None):
        """Label Studio asks for predictions: {"tasks": [...], "label_config": "<View>..."}.
        Boxes go to the config's RectangleLabels (its labels become the queries), OCR to
        its Polygon + TextArea; a video's tracks to its VideoRectangle (the Labels on the
        Video become the queries), frames sampled by the server's video_sampling.
        Interactive pre-annotation (`params.context`: boxes the user drew on the task's
        image) asks the detect-by-example model for more objects like them."""
        self._authorize(request)
        body = await self._json_object(request)
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ApiError(422, "tasks: a non-empty list of Label Studio tasks is required")
        xml = body.get("label_config") or self.label_configs.get(str(body.get("project", "")))
        if not isinstance(xml, str):
            raise ApiError(422, "label_config: missing (send it, or call /setup for the project)")
        try:
            config = parse_label_config(xml)
        except ValueError as err:
            raise ApiError(422, str(err)) from None
        ls_params = body.get("params")
        context = ls_params.get("context") if isinstance(ls_params, dict) else None
        drawn = self._ls_drawn(context, config, tasks) if context else None
        wanted = "detect-by-example" if drawn else _ls_task_kind(config)
        if model is None and wanted is None:
            raise ApiError(422, "label_config has no RectangleLabels, VideoRectangle, Polygon or "
                                "TextArea to fill")
        served = self._image_model(self._served_for(wanted if model is None else None, model))
        if not (config.video_rectangle or _fills_label_config(served.task, config)):
            raise ApiError(422, f"model {served.served_name!r} does task {served.task!r}, "
                                f"whose records fill no control of this label_config: a "
                                f"RectangleLabels takes the boxes of {', '.join(BOX_TASKS)}; "
                                f"a Polygon or a per-region TextArea the lines of ocr; a "
                                f"TextArea about the whole image the text of "
                                f"{', '.join(WHOLE_IMAGE_TEXT_TASKS)}")
        labels = config.labels if served.task == "detect" and config.labels else None
        # Drawn boxes are in percent here; _ls_task makes them pixels of the decoded image.
        examples = [ExampleBox(label=label, box=box) for label, box in drawn or ()]
        params = self._item_params(served, Params(labels=labels, examples=examples or None))
        if config.video_rectangle:
            if served.video_track is None:
                raise ApiError(422, f"model {served.served_name!r} does task {served.task!r}; "
                                    f"a VideoRectangle takes the tracked boxes of tasks "
                                    f"{', '.join(TRACKED_TASKS)}")
            with self._video_slot():  # one slot, the tasks' videos one after the other
                return {"results": [await self._ls_video_task(served, params, config, i, task)
                                    for i, task in enumerate(tasks)]}
        answers = [self._ls_task(served, params, config, i, task, drawn)
                   for i, task in enumerate(tasks)]
        return {"results": await _bounded_gather(answers, _in_flight_limit(served))}

    @staticmethod
    def _ls_drawn(context, config, tasks: list) -> list[tuple[str, tuple[float, ...]]]:
        """Interactive pre-annotation: the boxes the user drew on the one task's image
        (labeler.serve.formats.drawn_rectangles), 422 when they cannot be examples."""
        if config.rectangle is None:
            raise ApiError(422, "context: boxes drawn are examples for a RectangleLabels, "
                                "and label_config has none")
        if len(tasks) != 1:
            raise ApiError(422, f"context: regions are drawn on one task's image, and "
                                f"{len(tasks)} tasks were sent")
        try:
            return drawn_rectangles(context, config)
        except ValueError as err:
            raise ApiError(422, str(err)) from None

    @staticmethod
    def _ls_url(key: str, i: int, task) -> str:
        """The task's URL under data.<key>: a data: URL, or one the server may fetch."""
        data = task.get("data") if isinstance(task, dict) else None
        url = data.get(key) if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise ApiError(422, f"tasks.{i}.data.{key}: missing URL")
        return url

    async def _ls_bytes(self, url: str, max_bytes: int, kind: str) -> bytes | None:
        """The bytes of a task's data: URL or file inside Label Studio (a path: its
        uploads, its local files), else None (a URL fetched as any request's uri)."""
        if url.startswith("data:"):
            return decode_base64(url, kind)
        if url.startswith("/"):
            return await asyncio.to_thread(fetch_label_studio_file, url, self.spec.uri,
                                           max_bytes, kind)
        return None

    async def _ls_task(self, served: ServedModel, params: dict, config, i: int, task,
                       drawn: list | None = None) -> dict:
        """One image task's prediction; drawn: the boxes the user drew on it (percent), the
        model's examples."""
        url = self._ls_url(config.image_key, i, task)
        try:
            data = await self._ls_bytes(url, self.spec.limits.max_body_bytes, "image")
            decoded, decode_ms = await self._image(data, None if data is not None else url,
                                                   [served])
            if drawn:
                params = {**params, "examples": tuple(
                    Example(label, percent_to_pixels(box, decoded.width, decoded.height))
                    for label, box in drawn)}
                check_example_boxes(params["examples"], decoded.width, decoded.height,
                                    "context: ")
            record = await self._run(served, decoded, decode_ms, str(task.get("id", i)),
                                     url[:200], params)  # 200 chars: data: URLs are long
        except ApiError as err:
            raise ApiError(err.status, f"tasks.{i}: {err.message}", err.headers) from None
        if record["error"]:
            raise ApiError(500, f"tasks.{i}: {record['error']}")
        version = model_version(served.model.family, served.model.source,
                                record["model_revision"])
        return label_studio_prediction(record, config, version)

    async def _ls_video_task(self, served: ServedModel, params: dict, config, i: int,
                             task) -> dict:
        url = self._ls_url(config.video_key, i, task)
        try:
            data = await self._ls_bytes(url, self.spec.limits.max_video_bytes, "video")
            if data is None:
                data = await self._video_at(url)
            video = await self._video(served, data, self.spec.video_sampling.sampling(), None,
                                      served.video_track, str(task.get("id", i)), url[:200],
                                      params)
        except ApiError as err:
            raise ApiError(err.status, f"tasks.{i}: {err.message}", err.headers) from None
        # A video damaged part way: predicted from the frames before the damage, as the
        # export of a job's rows is (the whole request failed, its other tasks too).
        frames = video.records[:-1] if video.error else video.records
        if not frames:
            raise ApiError(422, f"tasks.{i}: video cannot be used: {video.error}")
        if video.error:
            log.warning("tasks.%d: %s; predicted from the %d frames before it", i,
                        video.error, len(frames))
        failed = next((r for r in frames if r["error"]), None)
        if failed is not None:
            raise ApiError(500, f"tasks.{i}: frame {failed['frame_index']}: {failed['error']}")
        version = model_version(served.model.family, served.model.source,
                                video.records[0]["model_revision"])
        return label_studio_video_prediction(video, config, task["data"], version)

    async def _json_object(self, request: Request) -> dict:
        limits = self.spec.limits
        body = await read_body(request, limits.max_body_bytes, limits.body_idle_timeout_s)
        try:
            parsed = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ApiError(400, f"malformed JSON body: {err}") from None
        if not isinstance(parsed, dict):
            raise ApiError(422, "the JSON body must be an object")
        return parsed


def build_app(spec: ServeSpec, tokens: list[str]):
    """The Serve application: one ModelServer deployment per served model, and the ingress.
    Both get this process's storage settings (worker_env), as a job's workers do: the
    replicas load `s3://` models, the ingress fetches `s3://` inputs, from the same S3."""
    storage = worker_env()
    handles = {}
    # The ingress fetches the files of Label Studio tasks (labeler.serve.fetch), with the
    # token under the same rule as the storage keys.
    label_studio = {k: os.environ[k] for k in (LABEL_STUDIO_URL_ENV, LABEL_STUDIO_KEY_ENV)
                    if os.environ.get(k)}
    if not forwards_credentials():
        label_studio.pop(LABEL_STUDIO_KEY_ENV, None)
    for served in spec.models:
        serving, res = served.serving, served.resources
        if served.batch_limit_warning:
            log.warning("model %s: %s", served.served_name, served.batch_limit_warning)
        options = {
            "name": f"model-{served.served_name}",
            "max_ongoing_requests": served.ongoing_limit,
            "max_queued_requests": serving.max_queued_requests,
            "ray_actor_options": {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus,
                                  **storage},
        }
        if serving.autoscaling is not None:
            options["autoscaling_config"] = serving.autoscaling.model_dump()
        else:
            options["num_replicas"] = serving.num_replicas
        handles[served.served_name] = serve.deployment(ModelServer).options(**options).bind(
            served.model_dump_json())
    ingress = serve.deployment(Ingress).options(
        name="ingress", ray_actor_options={"num_cpus": spec.ingress_num_cpus,
                                           **worker_env(label_studio)},
        # The ingress only parses, decodes and waits: many requests at once cost it little,
        # and the models' own queues are the limit that answers 503.
        max_ongoing_requests=1000)
    # Unset fields stay unset in the replica: limits.decode_min_side left out decodes a
    # Qwen2-VL / Ovis2 model's images whole (decode_side_for_tasks), set does not.
    return ingress.bind(spec.model_dump_json(exclude_unset=True), tokens, handles)
