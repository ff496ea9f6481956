"""Video requests of the online API: a video's sampled frames labelled by a served model as
a batch video job labels them, and its boxes linked into tracks.

    video bytes ──> labeler.jobs.video.video_rows: the batch job's own decode (the same
    or s3:// URI    frames, times and error rows; an S3 object read by range, as a job
                    reads it), in a worker thread, a frame at a time
                ──> each frame to the model deployment (annotate: its dynamic batching
                    gathers a video's frames into batches), at most `in_flight` at once
                ──> records in time order, with frame_index and timestamp_s (a clip's
                    clip_start_s and clip_end_s) and video
                ──> link_records: add_track_ids and `track` in each row's parameters,
                    as a tracked job's sink writes them

Frames go to the model while the video still decodes, and the ingress holds the pixels of at
most `in_flight` frames (or clips). The frame limit is checked before any frame reaches a
model: for frames once the packets are indexed (a 422 then costs the index pass and one
frame's decode), for clips from the duration the header gives (clip.fps frames a second),
and while the clips come for a video whose header does not say.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyarrow as pa

from labeler.config import TRACKED_TASKS, ClipSpec, TrackingSpec
from labeler.export.label_studio_video import DEFAULT_FRAME_RATE, video_prediction
from labeler.export.rows import Row, boxes_of
from labeler.jobs.stages import TaskTransforms
from labeler.jobs.video import VideoRow, open_video_source, video_rows
from labeler.media.image import MediaError
from labeler.media.video import Sampling, SamplingCounts, probe
from labeler.schemas.record import RECORD_SCHEMA
from labeler.serve.config import ServedModel
from labeler.serve.errors import ApiError
from labeler.serve.formats import LabelConfig, video_frame_rate
from labeler.tracking.rows import add_track_ids, count_tracks, with_track_parameters


@dataclass
class LabeledVideo:
    """What a video request made: `records`, one per row a batch job would write for the
    video (a frame or clip each, then an error row if decoding stopped early); `selected`:
    the frames the sampling selected (None for clips); `unchanged`: those min_change
    skipped; `error`: why decoding stopped (the last record's error), else None; `tracks`:
    tracks linked, None when the boxes were not linked."""

    records: list[dict]
    selected: int | None
    unchanged: int
    error: str | None
    tracks: int | None = None


def video_track(served: ServedModel, asked: TrackingSpec | bool | None) -> TrackingSpec | None:
    """How a video request's boxes are linked: as asked (settings, or false: not linked),
    else the served model's (None for a task whose boxes are not tracked). 422 for
    settings, or true, sent to such a task."""
    if asked is False:
        return None
    if asked is not None and served.video_track is None:
        raise ApiError(422, f"track: model {served.served_name!r} does task "
                            f"{served.task!r}; tracks link the boxes of tasks "
                            f"{', '.join(TRACKED_TASKS)}")
    return asked if isinstance(asked, TrackingSpec) else served.video_track


def video_clip(served: ServedModel, asked: ClipSpec | None, sampling_asked: bool,
               default: ClipSpec | None) -> ClipSpec | None:
    """How a clip task's model cuts the video: as asked, else the server's `default`; None
    for a per-frame task. 422 as a job's spec is refused: clips for a per-frame task,
    sampling for a clip task, or a clip task with no clip options."""
    name, task = served.served_name, served.task
    if not served.takes_clips:
        if asked is not None:
            raise ApiError(422, f"clip: model {name!r} does task {task!r}, which labels "
                                f"frames (`sampling`); clips are for video-caption and "
                                f"video-ask")
        return None
    if sampling_asked:
        raise ApiError(422, f"sampling: model {name!r} does task {task!r}, which samples "
                            f"inside each clip at clip.fps; give `clip`")
    clip = asked or default
    if clip is None:
        raise ApiError(422, f"clip: model {name!r} does task {task!r}, which labels clips; "
                            f"give clip.seconds (or set the server's video_clip)")
    return clip


# A frame row -> its record (the model deployment's, or the error row's).
Annotate = Callable[[VideoRow], Awaitable[dict]]


async def label_video(data: bytes | str, sampling: Sampling, clip: ClipSpec | None,
                      max_pixels: int, max_frames: int, annotate: Annotate,
                      in_flight: int) -> LabeledVideo:
    """Decode `data`, a video's bytes or its s3:// URI (already allowed), as a batch video
    job would (video_rows: frames by `sampling`, or clips when `clip` is given; no task
    transform: the model deployment applies it), `annotate` each row, at most `in_flight`
    at once.

    Raises ApiError 422 when the video cannot be opened or gives no frame or clip (its one
    row is an error, and no model ran), or when it would take more than max_frames frames.
    An annotate call that raises (a full queue, a timeout) cancels the others and its
    error is raised."""
    if clip is not None:
        await asyncio.to_thread(_check_clip_frames, data, clip, max_frames)
    counts = SamplingCounts()
    rows = video_rows(data, sampling, clip, max_pixels, TaskTransforms(), counts)
    clip_frames = 0
    stopped = None  # why decoding stopped, from the error row that ends a damaged video
    gate = asyncio.Semaphore(in_flight)
    pending: list[asyncio.Task] = []
    failures: list[BaseException] = []

    def finished(task: asyncio.Task) -> None:
        gate.release()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())

    try:
        while (row := await asyncio.to_thread(next, rows, None)) is not None:
            if row.images is None and not pending:
                raise ApiError(422, f"video cannot be used: {row.error}")
            if row.images is None:
                stopped = row.error
            if counts.selected is not None and counts.selected > max_frames:
                raise ApiError(422, f"sampling selects {counts.selected} frames of this video, "
                                    f"over the server's limit of {max_frames} a request; "
                                    "sample fewer (`sampling`: fps, max_frames, start_s, end_s) "
                                    "or run a batch job (labeler run --media video)")
            if clip is not None and row.images is not None:
                clip_frames += len(row.images["image"])
                if clip_frames > max_frames:  # a video whose header gave no duration
                    raise ApiError(422, _too_many_clip_frames(f"more than {max_frames}",
                                                              max_frames))
            await gate.acquire()
            if failures:
                gate.release()
                raise failures[0]
            task = asyncio.create_task(annotate(row))
            task.add_done_callback(finished)
            pending.append(task)
        records = list(await asyncio.gather(*pending))
    except BaseException:
        for task in pending:
            task.cancel()
        raise
    finally:
        try:
            rows.close()  # releases PyAV's container now
        except ValueError:
            pass  # cancelled while a next() still runs in its thread: it closes when collected
    return LabeledVideo(records, None if clip is not None else counts.selected or 0,
                        counts.unchanged, stopped)


def _check_clip_frames(data: bytes | str, clip: ClipSpec, max_frames: int) -> None:
    """422 when the header's duration says the clips would take over max_frames frames.
    A video that does not open passes: its error row says why."""
    source = None
    try:
        source = data if isinstance(data, bytes) else open_video_source(data)
        duration = probe(source).duration_s
    except (MediaError, OSError):
        return
    finally:
        if source is not None and not isinstance(source, (bytes, str)):
            source.close()
    if duration is not None and math.ceil(duration * clip.fps) > max_frames:
        raise ApiError(422, _too_many_clip_frames(
            f"{math.ceil(duration * clip.fps)} ({duration:.1f} s at {clip.fps:g} fps)",
            max_frames))


def _too_many_clip_frames(frames: str, max_frames: int) -> str:
    return (f"the clips of this video take {frames} frames, over the server's limit of "
            f"{max_frames} a request; sample fewer (`clip.fps`) or run a batch job "
            "(labeler run --media video)")


def _absent_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def position_fields(row: VideoRow) -> dict:
    """A row's place in its video (frame_index and timestamp_s, or a clip's start and end)
    and the video's metadata as a record has them (as the batch job's predictor writes
    them: absent is None)."""
    return {"frame_index": row.frame_index if row.frame_index >= 0 else None,
            "timestamp_s": _absent_if_nan(row.timestamp_s),
            "clip_start_s": _absent_if_nan(row.clip_start_s),
            "clip_end_s": _absent_if_nan(row.clip_end_s),
            "video": json.loads(row.video) if row.video else None}


def link_records(video: LabeledVideo, spec: TrackingSpec) -> LabeledVideo:
    """The video's records with detections.track_id and `track` in their parameters, exactly
    as a batch job run with `spec` writes them (labeler.tracking.rows on the same table)."""
    rows = pa.Table.from_pylist(video.records, schema=RECORD_SCHEMA)
    rows = with_track_parameters(add_track_ids(rows, spec), spec)
    records = rows.to_pylist()  # RECORD_SCHEMA is the Record's: these are its fields
    return LabeledVideo(records, video.selected, video.unchanged, video.error,
                        count_tracks(rows))


def label_studio_video_prediction(video: LabeledVideo, config: LabelConfig, data: dict,
                                  version: str) -> dict:
    """A linked video's records -> the Label Studio prediction of its task (`data`): one
    videorectangle region per track, from the config's VideoRectangle to its Video, frames
    numbered at the rate that Video plays the task at; what `labeler export --format
    label-studio` gives the same rows."""
    frames = [Row(r["id"], r["uri"], r["width"], r["height"], tuple(boxes_of(r["detections"])),
                  r["frame_index"], r["timestamp_s"], r["video"])
              for r in video.records if r["error"] is None]
    probed = (frames[0].video or {}).get("fps") if frames else None
    rate = video_frame_rate(config, data, probed, DEFAULT_FRAME_RATE)
    prediction, _, _ = video_prediction(frames, version, rate, config.video_rectangle,
                                        config.video_name)
    return prediction
