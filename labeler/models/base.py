"""The adapter contract that batch actors and (later) Serve deployments both drive.

    setup(device)              load weights on the worker, never at import time
    cpu_transform(pixels)      optional per-image work for the CPU stage (decode tasks)
    preprocess(images)         batch of (transformed) images -> model inputs on the device
    predict(inputs)            one batched forward or generate, no per-row Python loop
    postprocess(raw, images)   exactly one result dict per input image

cpu_transform runs in the job's decode tasks (after `setup_cpu_stage`, which loads no
weights), so per-image CPU work scales out over CPU workers instead of holding up the model
actor; `model_inputs` chains it with preprocess for callers that run everything in one place.

An adapter is built from a TaskSpec (small, picklable) and holds no weights until setup().

Several threads may run one adapter at once (an actor or replica that holds more than one
batch, so one batch's host-side work overlaps another's model time): `device_turn` lets one
batch at a time preprocess and predict; postprocess, which only reads its own outputs, runs
outside it, as does staging a batch's pixels in pinned memory on CUDA (`staged`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from labeler.config import QUERY_ALONE, TaskSpec
from labeler.models.staging import stage_pixels


@dataclass(frozen=True)
class Example:
    """A box drawn around an object, to find more like it in the same image
    (detect-by-example with examples): label, and box x0, y0, x1, y1 in pixels of the image's
    full oriented size (the units of its detections' boxes)."""

    label: str
    box: tuple[float, float, float, float]


def box_fits(box: tuple[float, ...], width: int, height: int) -> bool:
    """Whether x0, y0, x1, y1 (pixels) is a box inside a width x height image."""
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


@dataclass(frozen=True)
class ExampleImage:
    """An image that examples are drawn on, other than the image labelled: key identifies
    its content (embeddings of its boxes are cached by it: a hash of its bytes), pixels
    (h, w, 3) uint8 RGB as decoded, width/height its full oriented size (the boxes' units)."""

    key: str
    pixels: np.ndarray = field(repr=False)
    width: int
    height: int


@dataclass(frozen=True)
class ImageInput:
    """pixels: (h, w, 3) uint8 RGB as decoded (maybe reduced on load), or what the adapter's
    cpu_transform made of it; width/height: the full oriented size that boxes refer to;
    prompt: this row's own prompt or queries (an input column, an HTTP request), which
    replaces the spec's; caption: the row's caption, for tasks that build queries from it
    (pseudo-label); examples: boxes drawn in this image whose objects the task finds
    (detect-by-example; an HTTP request's `examples`), or drawn on example_image when given.
    Clip tasks get pixels (T, h, w, 3): the clip's frames in time order."""

    pixels: np.ndarray
    width: int
    height: int
    prompt: str | None = None
    caption: str | None = None
    examples: tuple[Example, ...] = ()
    example_image: ExampleImage | None = None


def pick_device() -> torch.device:
    """CUDA when the worker has one, else CPU. Chosen on the worker, never at import."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def attention_implementations(config, path: str = "model") -> dict[str, str | None]:
    """{config path: `_attn_implementation`} of a transformers model config and its
    sub-configs, nested (e.g. {"model": "sdpa", "model.text_config": "sdpa"}): "sdpa" is
    torch's fused scaled_dot_product_attention, "eager" the unfused matmul-softmax-matmul."""
    found = {path: getattr(config, "_attn_implementation", None)}
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            found.update(attention_implementations(sub, f"{path}.{key}"))
    return found


def ontology_parameters(spec: TaskSpec) -> dict:
    """A detect task's `queries`, `label_thresholds` and `templates`, each only when set
    (rows of a plain vocabulary keep the parameters they always had)."""
    found = {key: value for key in ("queries", "label_thresholds")
             if (value := getattr(spec, key))}
    if spec.templates != QUERY_ALONE:
        found["templates"] = spec.templates
    return found


def box_limit_parameters(spec: TaskSpec) -> dict:
    """`nms` with its threshold, and `max_detections`, each only when set (rows without them
    keep the parameters they always had)."""
    found = {"nms": spec.nms, "nms_threshold": spec.nms_threshold} if spec.nms != "none" else {}
    if spec.max_detections is not None:
        found["max_detections"] = spec.max_detections
    return found


def best_boxes(detections: list[dict], limit: int | None) -> list[dict]:
    """The `limit` highest-scored boxes (all when None), in their order; among equal scores
    the earlier box wins."""
    if limit is None or len(detections) <= limit:
        return detections
    ranked = sorted(range(len(detections)), key=lambda k: -detections[k]["score"])
    return [detections[k] for k in sorted(ranked[:limit])]


def suppress_overlaps(detections: list[dict], iou: float, per_label: bool) -> list[dict]:
    """Greedy non-maximum suppression: drop each box whose IoU with a higher-scored kept box
    is above `iou`; per_label: only boxes of the same label suppress each other. Boxes are
    {label, score, x0, y0, x1, y1} dicts (xyxy pixels); the kept ones keep their order."""
    if len(detections) < 2:
        return detections
    from torchvision.ops import batched_nms

    boxes = torch.tensor([[d["x0"], d["y0"], d["x1"], d["y1"]] for d in detections],
                         dtype=torch.float64)
    scores = torch.tensor([d["score"] for d in detections], dtype=torch.float64)
    if per_label:
        ids = {label: k for k, label in enumerate(dict.fromkeys(d["label"] for d in detections))}
        groups = torch.tensor([ids[d["label"]] for d in detections])
    else:
        groups = torch.zeros(len(detections), dtype=torch.long)
    keep = batched_nms(boxes, scores, groups, iou)
    return [detections[k] for k in sorted(keep.tolist())]


def channels_first(pixels: np.ndarray) -> torch.Tensor:
    """(..., h, w, 3) uint8 pixels (an image, a clip, a batch) -> (..., 3, h, w) uint8 tensor
    view, without a copy. Channels first leaves a processor nothing to guess (an image or
    frame 3 or 1 pixels tall would otherwise look channels-first to it)."""
    with warnings.catch_warnings():
        # Arrays from Ray's object store are read-only; nothing here writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(pixels).movedim(-1, -3)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA (tensor cores) and float32 on CPU (bf16 is slow there)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class Adapter(ABC):
    """Base of every (task, family) adapter."""

    #: The prompt used when neither the row nor the spec gives one. None: the task takes no
    #: free prompt (OWLv2 takes labels) or requires one (see check_spec).
    default_prompt: ClassVar[str | None] = None
    #: On CUDA, copy a batch's pixels into pinned host memory before its device turn
    #: (labeler.models.staging); False copies from where they are.
    pin_pixels: bool = True

    @classmethod
    def check_spec(cls, spec: TaskSpec) -> None:
        """Raise ValueError saying what is wrong with `spec` for this adapter. Called while
        the job spec is validated, before Ray starts; must not load weights."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.device: torch.device | None = None
        self.revision: str | None = spec.model.revision
        # Held from preprocess to the end of predict: one batch on the device at a time, so
        # a second batch in flight adds its outputs to GPU memory, never its activations.
        # with_spec's variants share it (a shallow copy), as they share the weights.
        self.device_turn = threading.Lock()

    @abstractmethod
    def setup(self, device: torch.device) -> None: ...

    @property
    def model_on_cpu(self) -> bool:
        """Whether the model actors of this task run on CPU (no GPU requested)."""
        return self.spec.resources.num_gpus == 0

    def setup_cpu_stage(self) -> None:
        """Load what cpu_transform needs (processor configs, never weights)."""

    def cpu_transform(self, pixels: np.ndarray) -> np.ndarray | None:
        """Per-image CPU work done before batching; None keeps the decoded pixels."""
        return None

    @property
    def cpu_inputs_per_image(self) -> int:
        """How many model inputs cpu_transform makes of one image (the decode stage sizes its
        tasks by it); 1 unless an adapter says otherwise. Needs the spec only, no setup."""
        return 1

    def staged(self, images: list[ImageInput], stacked: np.ndarray | None
               ) -> tuple[list[ImageInput], np.ndarray | None]:
        """The batch as it waits for its device turn: on CUDA its pixels in pinned memory
        (labeler.models.staging), else as given."""
        if self.pin_pixels and self.device is not None and self.device.type == "cuda":
            return stage_pixels(images, stacked)
        return images, stacked

    def transformed(self, images: list[ImageInput]) -> list[ImageInput]:
        """The images through cpu_transform, where it applies (host work only)."""
        out = []
        for im in images:
            pixels = self.cpu_transform(im.pixels)
            out.append(im if pixels is None else dataclasses.replace(im, pixels=pixels))
        return out

    def model_inputs(self, images: list[ImageInput]) -> Any:
        """cpu_transform (when it applies) then preprocess: decoded images -> model inputs."""
        return self.preprocess(self.transformed(images))

    @abstractmethod
    def preprocess(self, images: list[ImageInput], stacked: np.ndarray | None = None) -> Any:
        """stacked: the images' pixels as one (B, ...) array, when the caller already has
        them so (Ray Data hands equal-shaped rows over as one array): no copy needed."""

    @abstractmethod
    def predict(self, inputs: Any) -> Any: ...

    @abstractmethod
    def postprocess(self, raw: Any, images: list[ImageInput]) -> list[dict]: ...

    def with_spec(self, spec: TaskSpec) -> "Adapter":
        """An adapter for other parameters (labels, threshold, prompt) of the same model,
        sharing this one's loaded weights and processor. Adapters that turn parameters into
        tensors at setup override this to rebuild them."""
        variant = copy.copy(self)
        variant.spec = spec
        return variant

    @classmethod
    def input_refusal(cls, spec: TaskSpec, width: int, height: int,
                      max_pixels: int) -> str | None:
        """Why a decoded width x height image cannot go through this task's preprocessing
        (what the model's processor would build from it passes `max_pixels`, or the
        processor refuses it), else None. Checked where images are decoded, a job's decode
        stage and the online API, so such an image is an error row or a 422 before it
        reaches a model."""
        return None

    def prompt_for(self, image: ImageInput) -> str | None:
        """The row's prompt (unless blank: a manifest cell of spaces is no prompt), else the
        spec's, else the adapter's default."""
        own = image.prompt if image.prompt and image.prompt.strip() else None
        return own or self.spec.prompt or self.default_prompt

    def parameters(self) -> dict:
        """The parameters that shape this adapter's output, stored with every row."""
        return {"threshold": self.spec.threshold, "labels": self.spec.labels,
                "preprocess": self.spec.preprocess, **ontology_parameters(self.spec)}

    def parameters_json(self, examples: tuple[Example, ...] = (),
                        example_image: str | None = None) -> str:
        """parameters() and the spec's options that shape rows, as a row stores them;
        examples: an image's own (a request's or an input's), its queries, and
        example_image: the key of the image they are drawn on, when not the row's."""
        # Set only when a task has them, so rows of jobs without them read as before.
        extras = {name: getattr(self.spec, name).model_dump(mode="json")
                  for name in ("tiles", "track") if getattr(self.spec, name) is not None}
        if examples:
            extras["examples"] = [{"label": ex.label, "box": list(ex.box)} for ex in examples]
        if example_image is not None:
            extras["example_image"] = example_image
        return json.dumps({**self.parameters(), **box_limit_parameters(self.spec), **extras},
                          sort_keys=True)

    def run_timed(self, images: list[ImageInput], stacked: np.ndarray | None = None,
                  transformed: bool = True) -> tuple[list[dict], dict[str, float]]:
        """preprocess -> predict -> postprocess, with per-image stage times in ms.

        transformed: the images already went through cpu_transform (a job's decode stage
        did it); False applies it here (the online API, which has no decode stage)."""
        clock = time.perf_counter
        with torch.inference_mode():
            t0 = clock()
            ready, stacked = self.staged(images if transformed else self.transformed(images),
                                         stacked if transformed else None)
            t_ready = clock()
            with self.device_turn:  # the wait for it counts in no stage
                t_turn = clock()
                inputs = self.preprocess(ready, stacked)
                t1 = clock()
                raw = self.predict(inputs)
                if self.device is not None and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # so predict_ms is the GPU time
                t2 = clock()
            outputs = self.finish(raw, images)
            t3 = clock()
        per_image = 1000.0 / len(images)
        return outputs, {"preprocess_ms": (t_ready - t0 + t1 - t_turn) * per_image,
                         "predict_ms": (t2 - t1) * per_image,
                         "postprocess_ms": (t3 - t2) * per_image}

    def __call__(self, images: list[ImageInput]) -> list[dict]:
        """preprocess -> predict -> postprocess, for callers that need no timings."""
        with torch.inference_mode():
            ready, _ = self.staged(self.transformed(images), None)
            with self.device_turn:
                raw = self.predict(self.preprocess(ready))
            return self.finish(raw, images)

    def finish(self, raw: Any, images: list[ImageInput]) -> list[dict]:
        """postprocess, then the spec's `nms` and `max_detections` over each row's
        detections (boxes only drop; the others keep their order)."""
        outputs = self.postprocess(raw, images)
        spec = self.spec
        if spec.nms == "none" and spec.max_detections is None:
            return outputs
        for out in outputs:
            boxes = out.get("detections")
            if not boxes:
                continue
            if spec.nms != "none":
                boxes = suppress_overlaps(boxes, spec.nms_threshold, spec.nms == "per-label")
            out["detections"] = best_boxes(boxes, spec.max_detections)
        return outputs
