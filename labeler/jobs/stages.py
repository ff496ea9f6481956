"""The CPU stage of the pipeline: read, decode and the adapter's per-image CPU work, with
one error row per input that fails."""

from __future__ import annotations

import functools
import time

import numpy as np

from labeler.config import TaskSpec
from labeler.media.image import MediaError, decode_image
from labeler.models.base import Adapter
from labeler.registry import load_adapter_class
from labeler.storage import read_bytes

# Shape of the placeholder image of an error row: Ray Data's variable-shaped tensor column
# needs every row to have the same number of dimensions.
EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _cpu_stage_adapter(task_json: str) -> Adapter:
    """An adapter without weights, for cpu_transform; one per task per worker process
    (Ray reuses task workers, so the processor config is read once, not once a batch)."""
    task = TaskSpec.model_validate_json(task_json)
    adapter = load_adapter_class(task.task, task.model.family)(task)
    adapter.setup_cpu_stage()
    return adapter


def decode_batch(batch: dict[str, np.ndarray], max_pixels: int,
                 decode_min_side: int | None, task: TaskSpec | None = None) -> dict[str, np.ndarray]:
    """{id, uri, shard} -> the same plus image, width, height (original, oriented; 0 on
    error), error ("" or the reason) and decode_ms.

    image: (h, w, 3) uint8 as decoded, or what `task`'s adapter.cpu_transform makes of it.

    error is "" rather than None for good rows: a column of only None becomes Arrow's null
    type between stages and comes back as floats.
    """
    n = len(batch["uri"])
    adapter = _cpu_stage_adapter(task.model_dump_json()) if task is not None else None
    images, widths, heights, errors, times = [], np.zeros(n, np.int32), np.zeros(n, np.int32), [], []
    for i, uri in enumerate(batch["uri"]):
        start = time.perf_counter()
        try:
            decoded = decode_image(read_bytes(str(uri)), max_pixels, decode_min_side)
            transformed = adapter.cpu_transform(decoded.pixels) if adapter else None
            images.append(decoded.pixels if transformed is None else transformed)
            widths[i], heights[i] = decoded.width, decoded.height
            errors.append("")
        except MediaError as err:
            images.append(EMPTY_IMAGE)
            errors.append(str(err))
        except OSError as err:  # missing or unreadable file: the reason, without a traceback
            images.append(EMPTY_IMAGE)
            errors.append(f"cannot read input: {err.strerror or err}")
        times.append((time.perf_counter() - start) * 1000.0)
    image_column = np.empty(n, dtype=object)
    image_column[:] = images
    return {
        "id": batch["id"], "uri": batch["uri"], "shard": batch["shard"],
        "image": image_column, "width": widths, "height": heights,
        "error": np.array(errors, dtype=object).astype(str), "decode_ms": np.array(times, np.float32),
    }
