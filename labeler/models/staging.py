"""A batch's pixels staged in page-locked (pinned) host memory before it takes its device turn.

A copy to the GPU from ordinary, pageable memory goes through the driver's own staging
buffer. On the H200 host of the first GPU run that was about 3.5 GB/s: OWLv2's preprocess
took 0.26 ms for a 640x480 photo and 0.82 ms for a 960x960 tile, in proportion to the bytes
(docs/benchmarks.md). From page-locked memory the GPU reads the bytes itself (DMA), several
times faster. Packing a batch's pixels into one pinned buffer is a host memcpy. Adapter.run_timed
does it before taking Adapter.device_turn, where it overlaps the other batch's model time;
inside the turn only the fast copy remains.

The adapters need no change: they get numpy arrays that view the pinned buffer, and the
`torch.from_numpy(...).to(device)` they already do copies from there. Pinned blocks come
from torch's caching host allocator, so a batch reuses the last one's instead of locking
new pages each time. Every copy from the buffer is a blocking one (neither the adapters nor
the processors pass non_blocking), so it is done before the batch's preprocess returns and
the block may then serve the next batch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # labeler.models.base imports this module
    from labeler.models.base import ImageInput


def host_buffer(nbytes: int, pin: bool) -> np.ndarray:
    """A (nbytes,) uint8 array: pinned memory from torch's caching host allocator (pin) or
    ordinary memory. The array keeps the tensor that owns the memory alive."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin).numpy()


def stage_pixels(images: list[ImageInput], stacked: np.ndarray | None,
                 pin: bool = True) -> tuple[list[ImageInput], np.ndarray | None]:
    """The batch with its uint8 pixels copied into one host buffer (pinned when `pin`):
    images whose pixels view it, and `stacked` as one view of it when given (the images
    then view its rows, as the rows Ray Data hands over do). Pixels of another dtype (a
    CPU actor's processor floats) stay where they are."""
    if stacked is not None and stacked.dtype == np.uint8:
        view = host_buffer(stacked.nbytes, pin)[:stacked.nbytes].reshape(stacked.shape)
        np.copyto(view, stacked)
        return [dataclasses.replace(im, pixels=row) for im, row in zip(images, view)], view
    moved = [k for k, im in enumerate(images)
             if isinstance(im.pixels, np.ndarray) and im.pixels.dtype == np.uint8]
    if not moved:
        return images, stacked
    flat = host_buffer(sum(images[k].pixels.nbytes for k in moved), pin)
    staged, offset = list(images), 0
    for k in moved:
        pixels = images[k].pixels
        view = flat[offset:offset + pixels.nbytes].reshape(pixels.shape)
        np.copyto(view, pixels)
        staged[k] = dataclasses.replace(images[k], pixels=view)
        offset += pixels.nbytes
    return staged, stacked
