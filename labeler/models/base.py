"""The adapter contract that batch actors and (later) Serve deployments both drive.

    setup(device)              load weights on the worker, never at import time
    preprocess(images)         batch of decoded images -> model inputs on the device
    predict(inputs)            one batched forward or generate, no per-row Python loop
    postprocess(raw, images)   exactly one result dict per input image

An adapter is built from a TaskSpec (small, picklable) and holds no weights until setup().
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from labeler.config import TaskSpec


@dataclass(frozen=True)
class ImageInput:
    """pixels: (h, w, 3) uint8 RGB as decoded (maybe reduced on load);
    width/height: the full oriented size that output boxes refer to."""

    pixels: np.ndarray
    width: int
    height: int


def pick_device() -> torch.device:
    """CUDA when the worker has one, else CPU. Chosen on the worker, never at import."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA (tensor cores) and float32 on CPU (bf16 is slow there)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class Adapter(ABC):
    """Base of every (task, family) adapter."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.device: torch.device | None = None
        self.revision: str | None = spec.model.revision

    @abstractmethod
    def setup(self, device: torch.device) -> None: ...

    @abstractmethod
    def preprocess(self, images: list[ImageInput]) -> Any: ...

    @abstractmethod
    def predict(self, inputs: Any) -> Any: ...

    @abstractmethod
    def postprocess(self, raw: Any, images: list[ImageInput]) -> list[dict]: ...

    def parameters(self) -> dict:
        """The parameters that shape this adapter's output, stored with every row."""
        return {"threshold": self.spec.threshold, "labels": self.spec.labels,
                "preprocess": self.spec.preprocess}

    def parameters_json(self) -> str:
        return json.dumps(self.parameters(), sort_keys=True)

    def __call__(self, images: list[ImageInput]) -> list[dict]:
        """preprocess -> predict -> postprocess, for callers that need no timings."""
        with torch.inference_mode():
            return self.postprocess(self.predict(self.preprocess(images)), images)
