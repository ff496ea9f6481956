"""The generative families' images preprocessed where a GPU actor's model runs.

A GPU actor (resources.num_gpus > 0) hands the processor uint8 tensors on its device and
the processor's `device` (GenerativeAdapter.processor_images); a CPU actor passes the arrays
as the documented usage does. Both must give the model the same inputs. Here the "GPU"
actor's device is the CPU (CI has no GPU): the same code path, and the same operations, so
the two must agree exactly. The test marked gpu compares on CUDA, whose float32 resizing
kernels may round differently: pixel values within 1e-4 of the CPU's (normalised values
span about -2..2.6), token ids and masks identical. On the second H200 run it failed for
every family (up to 0.17-0.29 apart on 6-15% of the values); tests/gpu/test_resize_cuda.py
compares torchvision's resize alone on the same images, to tell the kernel from the path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.registry import load_adapter_class
from labeler.testing.samples import synthetic_image

# family -> (task, extra TaskSpec fields)
FAMILIES = {
    "florence2": ("caption", {"prompt": "<CAPTION>"}),
    "qwen2_vl": ("caption", {}),
    "blip2": ("caption", {}),
    "ovis2": ("caption", {}),
}
MIXED = [(96, 64), (50, 80), (73, 73)]  # sizes differ: one tensor per image
SAME = [(80, 60)] * 3  # one stacked (B, h, w, 3) array, as Ray Data hands equal rows over


def adapter_for(family: str, folder: str, num_gpus: float, device: str = "cpu"):
    task, extra = FAMILIES[family]
    spec = TaskSpec(task=task, model={"family": family, "source": folder, "dtype": "float32"},
                    resources={"num_gpus": num_gpus}, **extra)
    adapter = load_adapter_class(task, family)(spec)
    adapter.setup(torch.device(device))
    return adapter


def sample(sizes) -> tuple[list[ImageInput], np.ndarray | None]:
    pixels = [np.asarray(synthetic_image(w, h, seed)) for seed, (w, h) in enumerate(sizes)]
    for array in pixels:
        array.setflags(write=False)  # as read from Ray's object store
    images = [ImageInput(pixels=p, width=w, height=h) for p, (w, h) in zip(pixels, sizes)]
    stacked = np.stack(pixels) if len(set(sizes)) == 1 else None
    return images, stacked


def model_tensors(inputs) -> dict[str, torch.Tensor]:
    """The tensors a preprocess output gives the model (Florence-2 nests them)."""
    inputs = inputs.get("inputs", inputs)
    return {key: value for key, value in inputs.items() if isinstance(value, torch.Tensor)}


@pytest.mark.parametrize("family", FAMILIES)
def test_device_preprocessing_gives_the_documented_inputs(tiny_model, family):
    folder = tiny_model(family)
    on_cpu = adapter_for(family, folder, num_gpus=0)
    on_device = adapter_for(family, folder, num_gpus=1)
    assert on_cpu.model_on_cpu and not on_device.model_on_cpu
    for sizes in (MIXED, SAME):
        images, stacked = sample(sizes)
        kwargs = on_device.processor_images(images, stacked)
        assert kwargs["device"] == torch.device("cpu")
        assert isinstance(kwargs["images"], torch.Tensor) == (stacked is not None)
        expected = model_tensors(on_cpu.preprocess(images))
        actual = model_tensors(on_device.preprocess(images, stacked))
        assert expected.keys() == actual.keys() and "pixel_values" in actual
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6,
                                       msg=lambda m: f"{family} {key}: {m}")


def clip_sample() -> list[ImageInput]:
    """Two clips of different lengths and sizes, (T, h, w, 3) uint8."""
    rng = np.random.default_rng(0)
    return [ImageInput(pixels=rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
                       width=w, height=h) for t, w, h in [(4, 80, 60), (2, 56, 84)]]


def clip_adapter(folder: str, num_gpus: float, device: str = "cpu"):
    spec = TaskSpec(task="video-caption", resources={"num_gpus": num_gpus},
                    model={"family": "qwen2_vl", "source": folder, "dtype": "float32"})
    adapter = load_adapter_class("video-caption", "qwen2_vl")(spec)
    adapter.setup(torch.device(device))
    return adapter


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_clips_preprocessed_on_the_device_give_the_documented_inputs(tiny_model, device):
    folder = tiny_model("qwen2_vl")
    on_cpu, on_device = clip_adapter(folder, 0), clip_adapter(folder, 1, device)
    clips = clip_sample()
    expected = model_tensors(on_cpu.preprocess(clips))
    actual = model_tensors(on_device.preprocess(clips))
    assert expected.keys() == actual.keys() and "pixel_values_videos" in actual
    for key, value in expected.items():
        assert actual[key].device.type == device, key
        torch.testing.assert_close(actual[key].cpu(), value, rtol=0,
                                   atol=1e-4 if value.is_floating_point() else 0,
                                   msg=lambda m: f"{key}: {m}")
    frame = ImageInput(pixels=clips[0].pixels[0], width=80, height=60)  # not a clip
    with pytest.raises(ValueError, match=r"takes clips of \(T, h, w, 3\)"):
        on_device.preprocess([clips[0], frame])


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_preprocessing_matches_the_cpu(tiny_model, family):
    folder = tiny_model(family)
    on_cpu = adapter_for(family, folder, num_gpus=0)
    on_cuda = adapter_for(family, folder, num_gpus=1, device="cuda")
    for sizes in (MIXED, SAME):
        images, stacked = sample(sizes)
        expected = model_tensors(on_cpu.preprocess(images))
        actual = model_tensors(on_cuda.preprocess(images, stacked))
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            assert actual[key].device.type == "cuda", key
            if value.is_floating_point():
                torch.testing.assert_close(actual[key].cpu(), value, rtol=0, atol=1e-4,
                                           msg=lambda m: f"{family} {key}: {m}")
            else:
                assert torch.equal(actual[key].cpu(), value), f"{family} {key}"
