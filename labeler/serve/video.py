"""Video requests of the online API: a video's sampled frames labelled by a served model as
a batch video job labels them, and its boxes linked into tracks.

    video bytes ──> labeler.jobs.video.video_rows: the batch job's own decode (the same
                    frames, times and error rows), in a worker thread, a frame at a time
                ──> each frame to the model deployment (annotate: its dynamic batching
                    gathers a video's frames into batches), at most `in_flight` at once
                ──> records in time order, with frame_index, timestamp_s and video
                ──> link_records: add_track_ids and `track` in each row's parameters,
                    as a tracked job's sink writes them

Frames go to the model while the video still decodes, and the ingress holds the pixels of at
most `in_flight` frames. The sampled-frame limit is checked once the packets are indexed,
before any frame reaches a model (a 422 then costs the index pass and one frame's decode).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyarrow as pa

from labeler.config import TrackingSpec
from labeler.export.label_studio_video import DEFAULT_FRAME_RATE, video_prediction
from labeler.export.rows import Row, boxes_of
from labeler.jobs.stages import TaskTransforms
from labeler.jobs.video import VideoRow, video_rows
from labeler.media.video import Sampling, SamplingCounts
from labeler.schemas import Record
from labeler.schemas.record import RECORD_SCHEMA
from labeler.serve.errors import ApiError
from labeler.serve.formats import LabelConfig, video_frame_rate
from labeler.tracking.rows import add_track_ids, count_tracks, with_track_parameters


@dataclass
class LabeledVideo:
    """What a video request made: `records`, one per row a batch job would write for the
    video (a frame each, then an error row if decoding stopped early); `selected`: the
    frames the sampling selected; `unchanged`: those min_change skipped; `error`: why
    decoding stopped (the last record's error), else None; `tracks`: tracks linked, None
    when the boxes were not linked."""

    records: list[dict]
    selected: int
    unchanged: int
    error: str | None
    tracks: int | None = None


# A frame row -> its record (the model deployment's, or the error row's).
Annotate = Callable[[VideoRow], Awaitable[dict]]


async def label_video(data: bytes, sampling: Sampling, max_pixels: int, max_frames: int,
                      annotate: Annotate, in_flight: int) -> LabeledVideo:
    """Decode `data` as a batch video job would (video_rows, no task transform: the model
    deployment applies it), `annotate` each row, at most `in_flight` at once.

    Raises ApiError 422 when the video cannot be opened or sampling selects no frame (its
    one row is an error, and no model ran), or when sampling selects more than max_frames
    frames. An annotate call that raises (a full queue, a timeout) cancels the others and
    its error is raised."""
    counts = SamplingCounts()
    rows = video_rows(data, sampling, None, max_pixels, TaskTransforms(), counts)
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
            if counts.selected is not None and counts.selected > max_frames:
                raise ApiError(422, f"sampling selects {counts.selected} frames of this video, "
                                    f"over the server's limit of {max_frames} a request; "
                                    "sample fewer (`sampling`: fps, max_frames, start_s, end_s) "
                                    "or run a batch job (labeler run --media video)")
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
    error = records[-1]["error"] if records[-1]["error"] and records[-1]["frame_index"] is None \
        else None
    return LabeledVideo(records, counts.selected or 0, counts.unchanged, error)


def frame_fields(row: VideoRow) -> dict:
    """A row's frame position and video metadata as a record has them (as the batch job's
    predictor writes them: absent is None)."""
    return {"frame_index": row.frame_index if row.frame_index >= 0 else None,
            "timestamp_s": None if math.isnan(row.timestamp_s) else row.timestamp_s,
            "video": json.loads(row.video) if row.video else None}


def link_records(video: LabeledVideo, spec: TrackingSpec) -> LabeledVideo:
    """The video's records with detections.track_id and `track` in their parameters, exactly
    as a batch job run with `spec` writes them (labeler.tracking.rows on the same table)."""
    rows = pa.Table.from_pylist(video.records, schema=RECORD_SCHEMA)
    rows = with_track_parameters(add_track_ids(rows, spec), spec)
    records = [Record.model_validate(r).model_dump(mode="json") for r in rows.to_pylist()]
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
