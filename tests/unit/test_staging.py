"""stage_pixels: a batch's uint8 pixels copied into one host buffer (pinned on CUDA) that
the images (and the stacked rows) then view; the values are the same, and nothing else moves.
The pinned case itself needs CUDA: tests/gpu/test_pinned_staging_cuda.py."""

from __future__ import annotations

import numpy as np
import torch

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.staging import stage_pixels


def _pixels(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_stacked_rows_are_copied_into_one_buffer_and_the_images_view_its_rows():
    stacked = _pixels((3, 4, 5, 3), 0)
    images = [ImageInput(row, 5, 4, prompt=f"p{k}") for k, row in enumerate(stacked)]
    staged, view = stage_pixels(images, stacked, pin=False)
    assert np.array_equal(view, stacked) and not np.shares_memory(view, stacked)
    for k, (before, after) in enumerate(zip(images, staged)):
        assert np.shares_memory(after.pixels, view) and np.array_equal(after.pixels, stacked[k])
        assert (after.width, after.height, after.prompt) == (before.width, before.height, f"p{k}")


def test_images_of_other_shapes_share_one_buffer_and_other_dtypes_stay():
    photo, frame_clip = _pixels((7, 9, 3), 1), _pixels((2, 4, 6, 3), 2)
    floats = np.random.default_rng(3).random((3, 8, 8), dtype=np.float32)
    images = [ImageInput(photo, 9, 7), ImageInput(floats, 8, 8), ImageInput(frame_clip, 6, 4)]
    staged, stacked = stage_pixels(images, None, pin=False)
    assert stacked is None
    assert staged[1].pixels is floats  # a CPU actor's processor output: not moved
    assert np.array_equal(staged[0].pixels, photo) and np.array_equal(staged[2].pixels, frame_clip)
    # one buffer, the images back to back
    assert staged[2].pixels.ctypes.data - staged[0].pixels.ctypes.data == photo.nbytes
    assert not np.shares_memory(staged[0].pixels, photo)
    assert staged[0].pixels.shape == photo.shape and staged[2].pixels.shape == frame_clip.shape


def test_an_adapter_off_cuda_hands_its_pixels_over_as_they_are():
    from labeler.registry import load_adapter_class

    adapter = load_adapter_class("caption", "florence2")(
        TaskSpec(task="caption", model={"family": "florence2", "source": "m"}))
    adapter.device = torch.device("cpu")
    images = [ImageInput(_pixels((4, 4, 3), 4), 4, 4)]
    staged, stacked = adapter.staged(images, None)
    assert staged is images and stacked is None


STAGED: list[bool] = []  # per call of _staged_off_cuda: whether the pixels moved


def _staged_off_cuda(adapter, images, stacked):
    """Adapter.staged as on CUDA, in ordinary memory (pinning needs CUDA)."""
    staged, view = stage_pixels(images, stacked, pin=False)
    STAGED.append(not any(np.shares_memory(a.pixels, b.pixels) for a, b in zip(staged, images)))
    return staged, view


def test_adapters_give_the_same_results_from_staged_pixels(tiny_model, monkeypatch):
    """The GPU actors' code paths (num_gpus 1, run on CPU here) read the staged views as
    they read Ray's rows: OWLv2 fast (stacked canvases) and processor (photos of several
    sizes), Florence-2 (stacked photos, its processor on the device)."""
    from labeler.models.base import Adapter
    from labeler.registry import load_adapter_class
    from labeler.testing.samples import synthetic_image

    sizes = [(64, 48), (48, 64), (50, 50)]
    photos = [np.asarray(synthetic_image(w, h, seed)) for seed, (w, h) in enumerate(sizes)]
    cases = [("detect", "owlv2", {"labels": ["a cat"], "threshold": 0.0, "preprocess": "fast",
                                  "max_detections": 3}),
             ("detect", "owlv2", {"labels": ["a cat"], "threshold": 0.0, "max_detections": 3}),
             ("caption", "florence2", {"generation": {"max_new_tokens": 5}})]
    for task, family, options in cases:
        adapter = load_adapter_class(task, family)(TaskSpec(
            task=task, model={"family": family, "source": tiny_model(family)},
            resources={"num_gpus": 1}, **options))
        adapter.setup(torch.device("cpu"))
        if options.get("preprocess") == "fast":
            stacked = np.stack([adapter.cpu_transform(p) for p in photos])
            images = [ImageInput(row, w, h) for row, (w, h) in zip(stacked, sizes)]
        elif family == "florence2":
            stacked = np.stack([photos[0]] * 3)
            images = [ImageInput(row, 64, 48) for row in stacked]
        else:
            stacked, images = None, [ImageInput(p, w, h) for p, (w, h) in zip(photos, sizes)]
        plain, _ = adapter.run_timed(images, stacked)
        STAGED.clear()
        with monkeypatch.context() as patch:
            patch.setattr(Adapter, "staged", _staged_off_cuda)
            staged, _ = adapter.run_timed(images, stacked)
        assert STAGED == [True] and staged == plain, (task, family, options)
