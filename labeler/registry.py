"""The (task, family) -> adapter registry, imported lazily.

Keys are checked when a job spec is validated, so an unknown pair fails before Ray starts.
Adapter modules are imported on first use (validation calls the class's check_spec);
weights load only in setup(), on the worker that runs the adapter.
"""

from __future__ import annotations

import importlib

TASKS = ("detect", "ground", "detect-by-example", "caption", "ocr", "regions", "ask",
         "pseudo-label", "video-caption", "video-ask")
# Tasks that take a clip of video frames, one row per clip; every other task takes one image
# (or one sampled video frame) per row.
CLIP_TASKS = ("video-caption", "video-ask")
FAMILIES = ("owlv2", "florence2", "blip2", "qwen2_vl", "ovis2")
# Families whose predict is a generate loop: a Python loop of small kernel launches, bound
# by the host thread that issues them, whose postprocess is a small share of a batch.
GENERATIVE_FAMILIES = ("florence2", "blip2", "qwen2_vl", "ovis2")
# Model inputs per batch of a GPU actor whose spec names no batch_size. Measured on an H200
# (docs/benchmarks.md, full-size architectures in bf16): OWLv2 B/16 reached 98% of its best
# images/s at 64 (5.9 GiB), L/14 its best; Florence-2 and Qwen2-VL still gained up to 128
# (Florence-2 large 49 GiB, base 25, Qwen2-VL 10 at 448 px). BLIP-2 and Ovis2, unmeasured,
# take 32. A batch too large for a smaller GPU runs in halves (labeler.models.fitting).
GPU_BATCH_INPUTS = {"owlv2": 64, "florence2": 128, "qwen2_vl": 128, "blip2": 32, "ovis2": 32}
# Families whose processors size each image from its own pixels (dynamic resolution):
# Qwen2-VL keeps an image's size up to max_pixels (12.8 MP in its checkpoints), Ovis2 picks
# its tile grid from it. Decoding such an image reduced (InputSpec.decode_min_side) would
# change what the model sees, so by default they get every pixel.
FULL_RESOLUTION_FAMILIES = ("qwen2_vl", "ovis2")
# The `model_type` in the config.json of each family's checkpoints (what its transformers
# class loads): a checkpoint of one family given to another fails only on the workers, deep
# in transformers, so the job's check compares them first.
MODEL_TYPES = {"owlv2": "owlv2", "florence2": "florence2", "blip2": "blip-2",
               "qwen2_vl": "qwen2_vl", "ovis2": "ovis2"}

# (task, family) -> "module:Class". Adding a family is one module and one line here.
ADAPTERS: dict[tuple[str, str], str] = {
    ("caption", "blip2"): "labeler.models.blip2:Blip2Caption",
    ("ask", "blip2"): "labeler.models.blip2:Blip2Ask",

    ("detect", "florence2"): "labeler.models.florence2:Florence2Detector",
    ("ground", "florence2"): "labeler.models.florence2:Florence2Grounder",
    ("caption", "florence2"): "labeler.models.florence2:Florence2Captioner",
    ("ocr", "florence2"): "labeler.models.florence2:Florence2Ocr",
    ("regions", "florence2"): "labeler.models.florence2:Florence2Regions",

    ("caption", "ovis2"): "labeler.models.ovis2:Ovis2Caption",
    ("ocr", "ovis2"): "labeler.models.ovis2:Ovis2Ocr",
    ("ask", "ovis2"): "labeler.models.ovis2:Ovis2Ask",

    ("detect", "owlv2"): "labeler.models.owlv2:Owlv2Detector",
    ("ground", "owlv2"): "labeler.models.owlv2:Owlv2Grounder",
    ("detect-by-example", "owlv2"): "labeler.models.owlv2:Owlv2ExampleDetector",
    ("pseudo-label", "owlv2"): "labeler.models.owlv2_pseudo:Owlv2PseudoLabeler",

    ("ground", "qwen2_vl"): "labeler.models.qwen2_vl:Qwen2VLGrounder",
    ("caption", "qwen2_vl"): "labeler.models.qwen2_vl:Qwen2VLCaption",
    ("ocr", "qwen2_vl"): "labeler.models.qwen2_vl:Qwen2VLOcr",
    ("ask", "qwen2_vl"): "labeler.models.qwen2_vl:Qwen2VLAsk",
    ("video-caption", "qwen2_vl"): "labeler.models.qwen2_vl_video:Qwen2VLVideoCaption",
    ("video-ask", "qwen2_vl"): "labeler.models.qwen2_vl_video:Qwen2VLVideoAsk",
}


def supported_pairs() -> list[str]:
    """Every registered pair as 'task/family', sorted, for error messages."""
    return sorted(f"{task}/{family}" for task, family in ADAPTERS)


def adapter_path(task: str, family: str) -> str:
    """The 'module:Class' of an adapter; ValueError naming the valid choices otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid families: {', '.join(FAMILIES)}")
    try:
        return ADAPTERS[(task, family)]
    except KeyError:
        raise ValueError(
            f"task {task!r} is not available for family {family!r}; "
            f"supported task/family pairs: {', '.join(supported_pairs())}"
        ) from None


def load_adapter_class(task: str, family: str) -> type:
    """Import and return the adapter class for (task, family)."""
    module_name, class_name = adapter_path(task, family).split(":")
    return getattr(importlib.import_module(module_name), class_name)


def input_refusal(spec, width: int, height: int, max_pixels: int) -> str | None:
    """Why a task (a TaskSpec) cannot take a decoded width x height image, else None
    (the adapter's input_refusal: e.g. what its processor would build passes max_pixels)."""
    adapter = load_adapter_class(spec.task, spec.model.family)
    return adapter.input_refusal(spec, width, height, max_pixels)
