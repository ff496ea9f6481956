"""torchvision's bicubic, antialiased resize of uint8 images on CUDA against the CPU's.

On a CPU uint8 image torchvision runs a native uint8 kernel that, as PIL does, rounds and
clamps to 0..255 between its horizontal and vertical passes; on CUDA it converts to
float32, resizes in one pass, then clamps and rounds. The generative families' processors
resize this way on a GPU actor's device (tests/models/test_device_preprocess.py, whose CPU
reference is made to resize in float32 for the comparison). Here the kernels alone: CUDA
within one level of 255 of the CPU's float32 path, and, where bicubic overshoots, more than
that from the native uint8 one, as the CPU shows (the second H200 run's failures).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.testing.samples import synthetic_image

pytestmark = pytest.mark.gpu

SOURCES = [(96, 64), (50, 80), (73, 73), (80, 60)]  # (w, h): tests/models/test_device_preprocess
TARGETS = [(64, 64), (112, 112), (56, 84)]  # (h, w): Florence-2 / BLIP-2 tiny, Ovis2, Qwen2-VL


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bicubic_resize_on_cuda_is_the_cpus_float32_path(source):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    def resize(image, size):
        return F.resize(image, list(size), interpolation=InterpolationMode.BICUBIC,
                        antialias=True)

    w, h = source
    image = torch.from_numpy(np.asarray(synthetic_image(w, h, 0)).copy()).permute(2, 0, 1)
    for target in TARGETS:
        on_cuda = resize(image.cuda(), target).cpu().int()
        in_float32 = resize(image.float(), target).clamp_(0, 255).round_().int()
        levels = (on_cuda - in_float32).abs()
        assert int(levels.max()) <= 1, f"{source} -> {target}: {int(levels.max())} levels"
