"""The CPU stage of a video job: one video per call -> its frame or clip rows, streamed.

    from_items(rows)                       {id, uri, shard}, one block per pending video
      .map_batches(decode_video, batch_size=1)
                                           CPU tasks: a generator over one video that yields
                                           batches of rows as it decodes
      -> the model stages and the sink of every job (labeler.jobs.runner)

A row has the columns `labeler.jobs.stages.decode_batch` gives an image (id and uri are the
video's), with each task's image columns made by the same TaskTransforms, plus:

    frame_index   int, the frame's position in the video (-1: a clip or an error row)
    timestamp_s   float, the frame's time in seconds (NaN: a clip row; on the error row of a
                  truncated video, the time of the last whole frame)
    clip_start_s, clip_end_s   float, a clip row's window (NaN otherwise)
    video         JSON of {width, height, duration_s, fps, codec} ("" if it never opened)
    part_index, last_part      the row's position among the video's rows, and whether it is
                  the last (the sink completes a video when all its parts arrived)
    unchanged_frames           on the last row, the sampled frames min_change skipped (0 on
                  the others; the job summary adds them up, the sink does not write them)

Frame jobs: a row per sampled frame, pixels (h, w, 3) as decoded, width / height the frame's
(display) size. Clip jobs: a row per clip (labeler.media.clips), pixels (T, h, w, 3) scaled to
the clip's max_side, width / height the video's display size (clip tasks give no boxes).

Bad input: a video that cannot be opened (unreadable, empty, unknown container, no video
stream, over max_pixels) gives one error row; a truncated or corrupt one its rows up to the
damage, then one error row saying where decoding stopped; one whose sampling selects no frame
(a time range past its end) one error row saying so. A frame whose cpu_transform fails gives
an error row in its place and the video goes on.

Memory of a task: one batch of rows (held back by one row, to mark the last) plus PyAV's
decoder buffers and Ray Data's output buffer; a whole video is never held.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from labeler.config import ClipSpec, JobSpec, TaskSpec
from labeler.jobs.stages import TaskTransforms, failure_reason
from labeler.media.clips import sample_clips
from labeler.media.image import MediaError
from labeler.media.video import (Sampling, SamplingCounts, VideoDecodeError, VideoInfo, probe,
                                 sample_video)
from labeler.sinks.parquet import MissingParts
from labeler.storage import is_s3, open_input, worker_env

# Videos on S3 (or in a tar there) up to this size are fetched whole, in one request, and
# decoded from memory: sampling reads a video twice (the demux-only index pass, then the
# decoding), which by ranged reads costs twice the bytes and a request per 2 MiB. 128 MiB is
# ~2 minutes of 1080p H.264 at 8 Mbit/s; longer videos stream by range as before.
VIDEO_READ_WHOLE_BYTES = 128 * 1024**2
# Peak memory of one decode task, so Ray does not start more than fit: the worker's Python,
# Ray and torch (~0.4 GB), a batch of rows, an output block and its copies (VIDEO_BLOCK_BYTES)
# and PyAV's decoder. benchmarks/video_decode.py measured 0.9 GB private at 1080p with no
# transform; 1.5 GiB leaves room for the tasks' transformed columns; plus a video held whole.
VIDEO_TASK_MEMORY = 1536 * 1024**2 + VIDEO_READ_WHOLE_BYTES
# Output blocks of the pipeline: Ray Data gathers a task's rows into blocks of this size (its
# default, 128 MiB, is 20 1080p frames) and holds a block and its copies in the worker until
# it is stored. 32 MiB: 1.17 -> 0.9 GB private memory of a 1080p decode task
# (benchmarks/video_decode.py); blocks of 5 frames still amortise Ray's per-block cost.
VIDEO_BLOCK_BYTES = 32 * 1024**2
# glibc's malloc serves blocks over its mmap threshold with fresh pages and hands a free block
# at the top of the heap back to the OS when it exceeds its trim threshold. Both thresholds
# adapt, but only up to 32 MiB, and 1080p frames (6 MB each) allocated and freed every frame
# make their pages fault in anew, over and over. Fixed thresholds keep frames on the heap: a
# third less CPU for decode + RGB conversion at 1080p (10.1 -> 7.0 CPU-s for 1800 frames,
# benchmarks/video_decode.py), same peak memory. 32 MiB is glibc's largest mmap threshold (a
# 4K frame is 25 MB); 256 MiB is more than a task frees at once (a batch, an output block and
# its copies). glibc reads them when the worker process starts: they go in its runtime_env.
DECODE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2),
              "MALLOC_TRIM_THRESHOLD_": str(256 * 1024**2)}
# Frame rows per yielded batch, as the image stage's DECODE_BATCH: the model actors are fed
# while the video still decodes, and a task holds at most this many frames of its own.
FRAME_ROWS = 16
# A clip row is already T frames (10 s at 2 fps: 20), so clips go out one by one.
CLIP_ROWS = 1
NAN = float("nan")


@dataclass
class VideoRow:
    """One output row before it becomes columns; `images` None on an error row."""

    images: dict[str, np.ndarray] | None
    error: str = ""
    width: int = 0
    height: int = 0
    decode_ms: float = 0.0
    frame_index: int = -1
    timestamp_s: float = NAN
    clip_start_s: float = NAN
    clip_end_s: float = NAN
    video: str = ""
    last_part: bool = False
    unchanged_frames: int = 0


def decoded_videos(spec: JobSpec, todo: list[dict],
                   only_parts: dict[str, MissingParts] | None = None):
    """The Ray dataset of decoded video rows: one block and one decode_video call per video,
    so videos decode in parallel tasks and each task streams its rows out. only_parts: of
    the videos named, only these rows (see decode_video), each in a block of its own, so
    that a model stage of batch size 1 runs each in a task of its own."""
    import ray


    context = ray.data.DataContext.get_current()
    default_block_bytes = context.target_max_block_size
    # Sealed into this dataset's pipeline. A byte: every batch a task yields is a block.
    context.target_max_block_size = VIDEO_BLOCK_BYTES if only_parts is None else 1
    try:
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    finally:
        context.target_max_block_size = default_block_bytes
    return ds.map_batches(decode_video, batch_size=1,
                          fn_kwargs={"sampling": spec.input.sampling.sampling(),
                                     "clip": spec.input.clip,
                                     "max_pixels": spec.input.max_pixels,
                                     "tasks": list(spec.tasks), "only_parts": only_parts,
                                     "rows_per_batch": None if only_parts is None else 1},
                          num_cpus=1,
                          # Declared, as for images, also to keep Ray Data from fusing the
                          # decode into the model actors (see jobs.images).
                          memory=VIDEO_TASK_MEMORY, **worker_env(DECODE_ENV))


def decode_video(batch: dict[str, np.ndarray], sampling: Sampling, clip: ClipSpec | None,
                 max_pixels: int, tasks: list[TaskSpec] = (),
                 only_parts: dict[str, MissingParts] | None = None,
                 rows_per_batch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """map_batches generator: a batch of ONE video's row {id, uri, shard, ...} -> batches of
    its rows (see the module docstring), every input column repeated on each row.

    sampling: which frames frame jobs label; clip: clip options, None for a frame job;
    only_parts: {video id: the rows to yield} when the job labels again rows that were lost
    (a video decodes the same every time, so its rows keep their part_index); rows_per_batch:
    rows a yielded batch holds at most (default FRAME_ROWS, CLIP_ROWS for clips)."""
    if len(batch["uri"]) != 1:
        raise ValueError(f"decode_video takes one video per batch, got {len(batch['uri'])}")
    carried = {key: column[0] for key, column in batch.items()}
    transforms = TaskTransforms(tasks, ndim=3 if clip is None else 4)
    size = rows_per_batch or (FRAME_ROWS if clip is None else CLIP_ROWS)
    wanted = None if only_parts is None else only_parts.get(str(carried["id"]))
    held: list[VideoRow] = []
    part = 0
    counts = SamplingCounts()
    for row in video_rows(str(carried["uri"]), sampling, clip, max_pixels, transforms, counts):
        held.append(row)
        if len(held) > size:  # one row stays back: it may be the last
            yield from _only(_columns(carried, held[:size], part, transforms), wanted)
            part += size
            held = held[size:]
    held[-1].last_part = True
    held[-1].unchanged_frames = counts.unchanged
    yield from _only(_columns(carried, held, part, transforms), wanted)


def _only(columns: dict[str, np.ndarray], wanted: MissingParts | None):
    """The batch (none, if empty) with only the rows whose part_index is wanted (None: all)."""
    if wanted is not None:
        keep = np.array([part in wanted for part in columns["part_index"]], dtype=bool)
        if not keep.all():
            columns = {key: column[keep] for key, column in columns.items()}
    if len(columns["part_index"]):
        yield columns


def open_video_source(uri: str) -> str | BinaryIO:
    """What PyAV opens for the video at `uri`: a local file's path, else (s3://, a byte range
    of a tar) a file object, read whole into memory up to VIDEO_READ_WHOLE_BYTES, beyond
    that by range, only what PyAV asks. OSError when it cannot be opened; the caller closes
    a file object."""
    if not is_s3(uri) and os.path.isfile(uri):
        return uri
    return open_input(uri, whole_up_to=VIDEO_READ_WHOLE_BYTES)


def video_rows(uri: str | bytes, sampling: Sampling, clip: ClipSpec | None, max_pixels: int,
               transforms: TaskTransforms,
               counts: SamplingCounts | None = None) -> Iterator[VideoRow]:
    """The rows of one video in time order; at least one. uri: where the video is
    (open_video_source), or its bytes (the online API's uploads and fetches). counts: what
    frame sampling selected and left out, filled in as the rows are made."""
    lap = _Stopwatch()
    source = None
    try:
        source = uri if isinstance(uri, bytes) else open_video_source(uri)
        info = probe(source)
        if info.width * info.height > max_pixels:
            raise MediaError(f"video frames have {info.width}x{info.height} = "
                             f"{info.width * info.height} pixels, over the limit of {max_pixels}")
    except Exception as err:  # noqa: BLE001 - becomes the video's one error row
        _close(source)
        yield VideoRow(None, error=failure_reason(err), decode_ms=lap())
        return
    meta = _video_json(info)
    stopped = NAN
    count = 0
    try:
        if clip is None:
            for frame in sample_video(source, sampling, counts=counts):
                count += 1
                yield _image_row(transforms, frame.pixels, lap, meta, frame_index=frame.index,
                                 timestamp_s=frame.timestamp_s)
        else:
            for c in sample_clips(source, clip.seconds, clip.fps, clip.max_side, info.duration_s):
                count += 1
                yield _image_row(transforms, c.pixels, lap, meta, clip_start_s=c.start_s,
                                 clip_end_s=c.end_s, width=info.width, height=info.height)
    except VideoDecodeError as err:
        reason = str(err)
        stopped = NAN if err.stopped_at_s is None else err.stopped_at_s
    except Exception as err:  # noqa: BLE001 - the reason goes into the video's last row
        reason = failure_reason(err)
    else:
        reason = "" if count else _nothing_sampled(info, sampling, clip)
    finally:
        _close(source)
    if reason:
        yield VideoRow(None, error=reason, decode_ms=lap(), timestamp_s=stopped, video=meta)


def _image_row(transforms: TaskTransforms, pixels: np.ndarray, lap, meta: str,
               width: int | None = None, height: int | None = None, **position) -> VideoRow:
    """A frame or clip row; an error row in its place if a task's cpu_transform fails."""
    try:
        images = transforms.apply(pixels)
    except Exception as err:  # noqa: BLE001 - this row's error; the video goes on
        return VideoRow(None, error=failure_reason(err), decode_ms=lap(), video=meta, **position)
    return VideoRow(images, width=width or pixels.shape[1], height=height or pixels.shape[0],
                decode_ms=lap(), video=meta, **position)


def _nothing_sampled(info: VideoInfo, sampling: Sampling, clip: ClipSpec | None) -> str:
    """The error of a video that gave no row: what was asked for, and how long it is."""
    length = "unknown" if info.duration_s is None else f"{info.duration_s:.3f} s"
    if clip is not None:  # clip jobs sample inside each clip at clip.fps, not by `sampling`
        return (f"no clip could be made: clips of {clip.seconds:g} s at {clip.fps:g} fps, "
                f"video duration {length}")
    window = (f"from {sampling.start_s or 0:g} s"
              + ("" if sampling.end_s is None else f" to {sampling.end_s:g} s"))
    return f"sampling selected no frame: {sampling.mode} {window}, video duration {length}"


def _video_json(info: VideoInfo) -> str:
    return json.dumps({"width": info.width, "height": info.height,
                       "duration_s": info.duration_s, "fps": info.fps, "codec": info.codec})


def _close(source) -> None:
    if source is not None and not isinstance(source, (str, bytes)):
        source.close()


class _Stopwatch:
    """lap() -> milliseconds since the previous lap (or since it was made)."""

    def __init__(self):
        self.last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = (now - self.last) * 1000.0, now
        return elapsed


def _columns(carried: dict, rows: list[VideoRow], first_part: int,
             transforms: TaskTransforms) -> dict[str, np.ndarray]:
    """Rows -> one numpy batch: the input's columns repeated, then the row columns."""
    n = len(rows)
    out = {key: np.array([value] * n) for key, value in carried.items()}
    out.update(
        width=np.array([r.width for r in rows], np.int32),
        height=np.array([r.height for r in rows], np.int32),
        error=np.array([r.error for r in rows], dtype=object).astype(str),
        decode_ms=np.array([r.decode_ms for r in rows], np.float32),
        frame_index=np.array([r.frame_index for r in rows], np.int64),
        timestamp_s=np.array([r.timestamp_s for r in rows], np.float64),
        clip_start_s=np.array([r.clip_start_s for r in rows], np.float64),
        clip_end_s=np.array([r.clip_end_s for r in rows], np.float64),
        video=np.array([r.video for r in rows], dtype=object).astype(str),
        part_index=np.arange(first_part, first_part + n, dtype=np.int64),
        last_part=np.array([r.last_part for r in rows], np.bool_),
        unchanged_frames=np.array([r.unchanged_frames for r in rows], np.int64),
    )
    out.update(transforms.columns([r.images for r in rows]))
    return out
