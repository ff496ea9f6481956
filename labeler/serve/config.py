"""The online API's spec: YAML in, validated pydantic out, like a job spec.

A served model is a job's TaskSpec (the very same fields and checks, so a model that runs
in a batch job runs here with the same parameters) plus a `serving` block: dynamic batching,
replicas or autoscaling, queue length and timeout. GPU and CPU shares come from the task's
`resources` (num_gpus, num_cpus), as in a job.

    host: 0.0.0.0          # forced to 127.0.0.1 when no API token is configured
    port: 8000
    api_tokens: []         # plus LABELER_API_TOKENS (comma-separated) from the environment
    models:
      - name: detector     # default: the task
        task: detect
        model: {family: owlv2, source: google/owlv2-base-patch16-ensemble}
        labels: [cat, dog]
        resources: {num_gpus: 0.5, num_cpus: 1}
        serving: {max_batch_size: 16, batch_wait_timeout_s: 0.01, num_replicas: 2}
        track: {iou: 0.3}  # how its video requests link boxes (default settings if absent)
      - name: finder       # detect-by-example without a query_image: each request brings
        task: detect-by-example   # the boxes to find more of (`examples`)
        model: {family: owlv2, source: google/owlv2-base-patch16-ensemble}
    video_sampling: {fps: 1}  # frames of a video request labeled, unless it says
    video_clip: {seconds: 10, fps: 2}  # clips of a video request to a clip task's model
    limits: {max_body_bytes: 20971520, max_pixels: 50000000, max_video_bytes: 536870912,
             max_video_frames: 1800, max_video_requests: 4}
    uri: {allowed_hosts: [images.example.com], allowed_s3_buckets: [my-bucket]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labeler import registry
from labeler.config import (TRACKED_TASKS, ClipSpec, SamplingSpec, SpecError, TaskSpec,
                            TrackingSpec, format_validation_error, merge_overrides,
                            yaml_error_text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingSpec(_Strict):
    """Ray Serve autoscaling: replicas follow the requests in flight per replica."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    # Requests in flight per replica that the autoscaler aims at; with dynamic batching a
    # replica is busy but not overloaded at about one full batch.
    target_ongoing_requests: float = Field(16.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class ServingSpec(_Strict):
    """How one model deployment batches, scales and sheds load."""

    max_batch_size: int = Field(16, ge=1, description="requests per forward pass")
    # 10 ms: at most that much latency added to a lone request, while under load a batch
    # of a fast model fills well before it.
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)
    num_replicas: int = Field(1, ge=1, description="fixed replicas; ignored with autoscaling")
    autoscaling: AutoscalingSpec | None = None
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="requests a replica holds at once; default max_batch_size x "
                                "(the batches it runs at once + 1): those running, the next "
                                "one filling")
    max_queued_requests: int = Field(
        256, ge=1, description="requests waiting for a replica; beyond: 503 with Retry-After")
    request_timeout_s: float = Field(30.0, gt=0, description="beyond: 504")


# Stands in for the labels of a served model that takes them only from requests: its base
# adapter needs some to load; each request brings its own (the ingress refuses one without).
PLACEHOLDER_LABEL = "object"


class ServedModel(TaskSpec):
    """A job task (model, labels, threshold, prompt, generation, resources) plus serving.

    Unlike a job's task, a detector may be served without labels; every request must then
    give its own (`labels_per_request`); likewise detect-by-example without a query_image
    (`examples_per_request`: requests bring boxes drawn on an image). `track` is how the
    model's video requests (/v1/video, Label Studio video tasks) link boxes into tracks;
    image requests ignore it."""

    serving: ServingSpec = ServingSpec()

    @model_validator(mode="after")
    def _pair_and_requirements(self) -> "ServedModel":
        # Replaces TaskSpec's check of the same name: the same checks, the adapter's on the
        # spec with a placeholder label when none is configured.
        self.check_pairs()
        if self.model.compile:
            # A compiled model runs a graph per input shape, compiled at its first batch;
            # dynamic batching makes a new size of almost every request count, and each
            # would hold its requests for a compile of tens of seconds.
            raise ValueError("model.compile is for batch jobs (one batch size): a served "
                             "model's batches vary in size, and each new size would stall "
                             "requests for a compile")
        cls = registry.load_adapter_class(self.task, self.model.family)
        cls.check_spec(self if self.labels or not self.labels_per_request else
                       self.model_copy(update={"labels": [PLACEHOLDER_LABEL]}))
        return self

    @property
    def served_name(self) -> str:
        return self.output_name

    @property
    def ongoing_limit(self) -> int:
        """Requests a replica holds at once: serving.max_ongoing_requests, else room for
        the batches it runs at once (batches_at_once) and the next one filling."""
        serving = self.serving
        return (serving.max_ongoing_requests
                or (self.batches_at_once + 1) * serving.max_batch_size)

    @property
    def batch_limit_warning(self) -> str | None:
        """A replica never holds more than ongoing_limit requests, so a smaller value caps
        its batches below max_batch_size (useful only to shed load early)."""
        batch, limit = self.serving.max_batch_size, self.ongoing_limit
        at_once = self.batches_at_once
        if limit < batch * at_once:
            return (f"max_ongoing_requests ({limit}) is below max_batch_size ({batch}) x "
                    f"the {at_once} batch(es) run at once: batches will hold at most "
                    f"{max(1, limit // at_once)}")
        return None

    @property
    def labels_per_request(self) -> bool:
        """No labels configured, and the adapter needs some: requests must bring them."""
        if self.labels:
            return False
        try:
            registry.load_adapter_class(self.task, self.model.family).check_spec(self)
        except ValueError:
            return True
        return False

    @property
    def examples_per_request(self) -> bool:
        """detect-by-example served without a query_image or examples: requests bring
        `examples`."""
        return self.task == "detect-by-example" and not self.query_image and not self.examples

    @property
    def video_track(self) -> TrackingSpec | None:
        """How a video request's boxes are linked when it does not say: `track`, else the
        default settings, for a task whose boxes name objects; None for the others."""
        if self.task not in TRACKED_TASKS:
            return None
        return self.track or TrackingSpec()

    def task_spec(self) -> TaskSpec:
        """The TaskSpec a batch job would run on images (everything but `serving` and
        `track`, which the ingress applies to a video's records); with labels only from
        requests, the placeholder label stands in so the model can load."""
        data = self.model_dump(exclude={"serving", "track"})
        if self.labels_per_request:
            data["labels"] = [PLACEHOLDER_LABEL]
        return TaskSpec.model_validate(data)


class LimitsSpec(_Strict):
    # 20 MiB: a 24-megapixel JPEG at high quality, base64-encoded (x4/3), fits.
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # Seconds a request body may stall (no byte arriving) before a 408: a slow upload keeps
    # going, a client that stopped sending does not hold a request open for ever.
    body_idle_timeout_s: float = Field(30.0, gt=0)
    # 50 megapixels: larger than any camera image people label, far below a decompression bomb.
    max_pixels: int = Field(50_000_000, ge=1)
    # Pixels an ingress replica decodes at once (its images' width x height, from their
    # headers); more wait their turn. 200 megapixels: 16 camera images of 12 MP at once, or
    # 4 at max_pixels, ~3 GB of decoding memory at most.
    max_decoding_pixels: int = Field(200_000_000, ge=1)
    # As in a job (InputSpec.decode_min_side, set or not), so both decode an image to the
    # same pixels.
    decode_min_side: int | None = Field(1008, ge=1)
    # Video requests (/v1/video, Label Studio video tasks). 512 MiB: 9 minutes of 1080p H.264
    # at 8 Mbit/s; the ingress holds an uploaded or https video in memory while its frames
    # decode (an s3:// one is read by range, as a job reads it, and is not limited).
    max_video_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    # Sampled frames one video request may label: 30 minutes at 1 fps. More is a batch job's
    # work (`labeler run --media video`), which resumes and does not hold an HTTP request.
    max_video_frames: int = Field(1800, ge=1)
    # Video requests an ingress replica runs at once; more get 503 + Retry-After before any
    # work. 4 x one replica's worth of frames in flight (ServedModel.ongoing_limit each:
    # 32 at the default max_batch_size, 48 for OWLv2 on a GPU, which runs two batches at once)
    # stays within a model's default queue (max_queued_requests 256), so a running video is
    # not refused frames half way.
    max_video_requests: int = Field(4, ge=1)


class UriSpec(_Strict):
    """Where `uri` inputs may come from. Empty lists: no URI input is accepted."""

    allowed_hosts: list[str] = Field(default_factory=list, description="https hosts, exact names")
    allowed_s3_buckets: list[str] = Field(default_factory=list)
    fetch_timeout_s: float = Field(10.0, gt=0)
    label_studio_url: str | None = Field(
        None, pattern=r"^https?://[^/?#]+/?$",
        description="Label Studio's own address (http(s)://host:port), where the images of "
                    "its tasks that are files inside it (/data/upload/..., "
                    "/data/local-files/?d=...) are fetched, with the API token in "
                    "LABEL_STUDIO_API_KEY; default: LABEL_STUDIO_URL")


class ServeSpec(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_tokens: list[str] = Field(default_factory=list)
    models: list[ServedModel] = Field(min_length=1)
    limits: LimitsSpec = LimitsSpec()
    uri: UriSpec = UriSpec()
    video_sampling: SamplingSpec = Field(
        SamplingSpec(), description="which frames of a video request are labeled, unless the "
                                    "request says (default: 1 frame per second)")
    video_clip: ClipSpec | None = Field(
        None, description="how a video request to a clip task's model (video-caption, "
                          "video-ask) is cut, unless the request says")
    # The ingress decodes images and fans requests out; it needs little CPU of its own.
    ingress_num_cpus: float = Field(0.25, ge=0)

    @model_validator(mode="after")
    def _unique_names(self) -> "ServeSpec":
        names = [m.served_name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique (set `name:` on repeated tasks), got {names}")
        return self

    def model(self, name: str) -> ServedModel | None:
        return next((m for m in self.models if m.served_name == name), None)


# Serve-level flags; task flags (--task, --family, --model, --labels, ...) go through
# labeler.config.merge_overrides exactly as for `labeler run`, onto `models` instead of `tasks`.
SERVE_FLAGS = ("host", "port")
SERVING_FLAGS = ("max_batch_size", "batch_wait_timeout_s", "num_replicas")
# Video requests' defaults, named as `labeler run`'s flags of input.sampling and input.clip.
VIDEO_FLAGS = {"sample_fps": ("video_sampling", "fps"),
               "every_n_frames": ("video_sampling", "every_n_frames"),
               "min_change": ("video_sampling", "min_change"),
               "clip_seconds": ("video_clip", "seconds"), "clip_fps": ("video_clip", "fps")}


def load_serve_spec(path: str | Path | None = None, **overrides: Any) -> ServeSpec:
    """Read an optional YAML spec, apply CLI overrides (None: not given), validate.
    Raises SpecError naming each bad field."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise SpecError(f"serve config {str(path)!r} does not exist") from None
        except yaml.YAMLError as err:
            raise SpecError(f"serve config {str(path)!r} is not valid YAML: "
                            f"{yaml_error_text(err, path)}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"serve config {str(path)!r} must hold a mapping at the top level")
    raw = dict(raw)
    for key in SERVE_FLAGS:
        if overrides.get(key) is not None:
            raw[key] = overrides[key]
    for key, (section, field) in VIDEO_FLAGS.items():
        if overrides.get(key) is not None:
            raw[section] = {**(raw.get(section) or {}), field: overrides[key]}
    serving = {k: overrides[k] for k in SERVING_FLAGS if overrides.get(k) is not None}
    task_overrides = {k: v for k, v in overrides.items()
                      if k not in SERVE_FLAGS and k not in SERVING_FLAGS and k not in VIDEO_FLAGS}
    # merge_overrides writes task flags under "tasks"; a serve config calls them "models".
    if "models" in raw:
        raw["tasks"] = raw.pop("models")
    try:
        raw = merge_overrides(raw, task_overrides)
    except SpecError as err:  # a flag for some tasks only (--track), and none is served
        raise SpecError(str(err).replace("the job has none", "no served model does one")) \
            from None
    if "tasks" in raw:
        raw["models"] = raw.pop("tasks")
    if serving:
        for model in raw.get("models") or []:
            if isinstance(model, dict):
                model["serving"] = {**(model.get("serving") or {}), **serving}
    try:
        return ServeSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, ServeSpec, flags=True).replace(
            "invalid job spec", "invalid serve config")) from None
