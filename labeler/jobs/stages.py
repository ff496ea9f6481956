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


def transforms_in_cpu_stage(task: TaskSpec) -> bool:
    """Whether the task's adapter does per-image work in this stage (overrides cpu_transform)."""
    cls = load_adapter_class(task.task, task.model.family)
    return cls.cpu_transform is not Adapter.cpu_transform


def input_column(task: TaskSpec) -> str:
    """The column a task's model actor reads its images from."""
    return f"pixels__{task.output_name}" if transforms_in_cpu_stage(task) else "image"


def decode_batch(batch: dict[str, np.ndarray], max_pixels: int, decode_min_side: int | None,
                 tasks: list[TaskSpec] = ()) -> dict[str, np.ndarray]:
    """{id, uri, shard, ...} -> the same plus width, height (original, oriented; 0 on error),
    error ("" or the reason), decode_ms, and the images each task reads (`input_column`):
    `image`, (h, w, 3) uint8 as decoded, if some task takes decoded images, and
    `pixels__<task>` with what that task's cpu_transform made of each image.

    error is "" rather than None for good rows: a column of only None becomes Arrow's null
    type between stages and comes back as floats.
    """
    n = len(batch["uri"])
    transformers = {t.output_name: _cpu_stage_adapter(t.model_dump_json())
                    for t in tasks if transforms_in_cpu_stage(t)}
    keep_raw = not tasks or len(transformers) < len(tasks)
    columns: dict[str, list] = {name: [] for name in transformers}
    raw, widths, heights = [], np.zeros(n, np.int32), np.zeros(n, np.int32)
    errors, times = [], []
    for i, uri in enumerate(batch["uri"]):
        start = time.perf_counter()
        try:
            decoded = decode_image(read_bytes(str(uri)), max_pixels, decode_min_side)
            prepared = {}
            for name, adapter in transformers.items():
                transformed = adapter.cpu_transform(decoded.pixels)
                prepared[name] = decoded.pixels if transformed is None else transformed
        except MediaError as err:
            reason = str(err)
        except OSError as err:  # missing or unreadable file: the reason, without a traceback
            reason = f"cannot read input: {err.strerror or err}"
        except Exception as err:  # noqa: BLE001 - a transform that fails on this image
            reason = f"preprocessing failed: {type(err).__name__}: {err}"
        else:
            reason = ""
            widths[i], heights[i] = decoded.width, decoded.height
        for name in transformers:
            columns[name].append(prepared[name] if not reason else EMPTY_IMAGE)
        raw.append(decoded.pixels if not reason else EMPTY_IMAGE)
        errors.append(reason)
        times.append((time.perf_counter() - start) * 1000.0)
    out = {key: value for key, value in batch.items()}
    out.update(width=widths, height=heights, error=np.array(errors, dtype=object).astype(str),
               decode_ms=np.array(times, np.float32))
    if keep_raw:
        out["image"] = _object_column(raw)
    for name, images in columns.items():
        out[f"pixels__{name}"] = _object_column(images)
    return out


def _object_column(arrays: list[np.ndarray]) -> np.ndarray:
    """A list of arrays as one numpy object column (Ray Data stores it as a tensor column)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column
