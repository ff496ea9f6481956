"""The CPU stage of the pipeline: read, decode and the adapter's per-image CPU work, with
one error row per input that fails. decode_batch is the image stage; TaskTransforms (each
task's cpu_transform and the image columns it fills) and failure_reason are shared with the
video stage (labeler.jobs.video), so a frame becomes a row exactly as an image does."""

from __future__ import annotations

import functools
import time

import numpy as np

from labeler.config import TaskSpec
from labeler.media.image import MediaError, decode_image
from labeler.models.base import Adapter
from labeler.registry import input_refusal, load_adapter_class
from labeler.storage import read_bytes


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


class TaskTransforms:
    """The image columns of a decoded row: what each task's model actor reads
    (`input_column`) made from one decoded image, video frame or clip.

    ndim: dimensions of the pixels handed to `apply`: 3 for an image or frame (h, w, 3), 4 for
    a clip (T, h, w, 3).
    """

    def __init__(self, tasks: list[TaskSpec] = (), ndim: int = 3):
        self.transformers = {t.output_name: _cpu_stage_adapter(t.model_dump_json())
                             for t in tasks if transforms_in_cpu_stage(t)}
        # `image` is kept for tasks without a CPU-stage transform (and for a bare decode).
        self.keep_raw = not tasks or len(self.transformers) < len(tasks)
        # What an error row holds in each column: an empty array of the column's dtype and
        # number of dimensions (Ray Data's tensor columns must agree on both across blocks,
        # and a block may hold only error rows: a video that does not open).
        self.placeholders = {f"pixels__{t.output_name}": _placeholder(t.model_dump_json(), ndim)
                             for t in tasks if t.output_name in self.transformers}
        if self.keep_raw:
            self.placeholders["image"] = np.zeros((0,) * (ndim - 1) + (3,), np.uint8)

    def apply(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """{column: array}: `image`, the pixels as given, if some task reads them, and
        `pixels__<task>` with what that task's cpu_transform made of them. Raises what a
        transform raises."""
        out = {"image": pixels} if self.keep_raw else {}
        for name, adapter in self.transformers.items():
            transformed = adapter.cpu_transform(pixels)
            out[f"pixels__{name}"] = pixels if transformed is None else transformed
        return out

    def columns(self, rows: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray]:
        """Results of `apply` for a batch of rows (None for an error row) -> one object
        column each."""
        return {name: _object_column([empty if row is None else row[name] for row in rows])
                for name, empty in self.placeholders.items()}


# Side of the blank image whose transform tells a column's dtype and dimensions: small, so
# it costs little, but no smaller than any processor accepts.
PROBE_SIDE = 64


@functools.lru_cache(maxsize=8)
def _placeholder(task_json: str, ndim: int) -> np.ndarray:
    """An empty array of the dtype and number of dimensions of a task's cpu_transform output
    for (h, w, 3) pixels (ndim 3) or (T, h, w, 3) clips (ndim 4); once per worker process."""
    blank = np.zeros((2,) * (ndim - 3) + (PROBE_SIDE, PROBE_SIDE, 3), np.uint8)
    out = _cpu_stage_adapter(task_json).cpu_transform(blank)
    out = blank if out is None else np.asarray(out)
    return np.zeros((0,) * out.ndim, out.dtype)


def failure_reason(err: Exception) -> str:
    """The error-row reason for an input that failed in the decode stage."""
    if isinstance(err, MediaError):
        return str(err)
    if isinstance(err, OSError):  # missing or unreadable file: the reason, without a traceback
        return f"cannot read input: {err.strerror or err}"
    return f"preprocessing failed: {type(err).__name__}: {err}"  # a transform that failed


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
    transforms = TaskTransforms(tasks)
    images: list[dict[str, np.ndarray] | None] = []
    widths, heights = np.zeros(n, np.int32), np.zeros(n, np.int32)
    errors, times = [], []
    for i, uri in enumerate(batch["uri"]):
        start = time.perf_counter()
        try:
            decoded = decode_image(read_bytes(str(uri)), max_pixels, decode_min_side)
            _check_tasks_take(tasks, decoded.pixels, max_pixels)
            prepared = transforms.apply(decoded.pixels)
        except Exception as err:  # noqa: BLE001 - becomes this row's error
            reason, prepared = failure_reason(err), None
        else:
            reason = ""
            widths[i], heights[i] = decoded.width, decoded.height
        images.append(prepared)
        errors.append(reason)
        times.append((time.perf_counter() - start) * 1000.0)
    out = {key: value for key, value in batch.items()}
    out.update(width=widths, height=heights, error=np.array(errors, dtype=object).astype(str),
               decode_ms=np.array(times, np.float32))
    out.update(transforms.columns(images))
    return out


def _check_tasks_take(tasks: list[TaskSpec], pixels: np.ndarray, max_pixels: int) -> None:
    """MediaError naming the first task that cannot take these decoded (h, w, 3) pixels
    (labeler.registry.input_refusal), before any preprocessing runs on them."""
    height, width = pixels.shape[:2]
    for task in tasks:
        refusal = input_refusal(task, width, height, max_pixels)
        if refusal is not None:
            raise MediaError(f"task {task.output_name!r} cannot take this image: {refusal}")


def _object_column(arrays: list[np.ndarray]) -> np.ndarray:
    """A list of arrays as one numpy object column (Ray Data stores it as a tensor column)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column
