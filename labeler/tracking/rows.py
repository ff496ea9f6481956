"""Track ids for the rows of a job's output: `detections.track_id`, per video."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.config import TrackingSpec
from labeler.schemas.record import RECORD_SCHEMA
from labeler.tracking.tracker import NO_TRACK, link_tracks

DETECTIONS = RECORD_SCHEMA.field("detections").type


def add_track_ids(rows: pa.Table, spec: TrackingSpec) -> pa.Table:
    """`rows` with `detections.track_id` set by linking each video's boxes into tracks.

    rows: one task's rows (RECORD_SCHEMA) of whole videos, each video's rows together and
    in time order, as the sink commits a shard and writes it (a file written before
    detections had track_id gains it). A row without detections (an error row) is no step
    of its video's tracking; a box in no track gets track_id null. Ids count from 1 in
    each video.
    """
    detections = rows.column("detections").combine_chunks().cast(DETECTIONS)
    if detections.null_count == len(detections):
        return _with_detections(rows, detections)
    lengths = pc.fill_null(pc.list_value_length(detections), 0).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = detections.flatten()  # the boxes of every row, in row order
    boxes = np.stack([flat.field(c).to_numpy(zero_copy_only=False)
                      for c in ("x0", "y0", "x1", "y1")], axis=1)
    scores = flat.field("score").to_numpy(zero_copy_only=False)
    labels = pc.dictionary_encode(flat.field("label")).indices.to_numpy(zero_copy_only=False)
    valid = detections.is_valid().to_numpy(zero_copy_only=False)
    track_ids = np.full(len(flat), NO_TRACK, dtype=np.int64)
    for first, last in _video_ranges(rows.column("id").to_pylist()):
        frames = first + np.flatnonzero(valid[first:last])
        if not len(frames):
            continue
        # The video's labeled frames' boxes are contiguous: error rows hold none.
        lo, hi = offsets[frames[0]], offsets[frames[-1] + 1]
        starts = np.append(offsets[frames], hi) - lo
        track_ids[lo:hi] = link_tracks(boxes[lo:hi], scores[lo:hi], labels[lo:hi], starts, spec)
    column = pa.array(track_ids, pa.int32(), mask=track_ids == NO_TRACK)
    fields = [flat.type.field(i) for i in range(flat.type.num_fields)]
    values = pa.StructArray.from_arrays(
        [column if f.name == "track_id" else flat.field(f.name) for f in fields], fields=fields)
    tracked = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values,
                                       type=detections.type, mask=pc.invert(detections.is_valid()))
    return _with_detections(rows, tracked)


def with_track_parameters(rows: pa.Table, spec: TrackingSpec) -> pa.Table:
    """`rows` with `track` set in each row's parameters, as a job with `spec` writes them
    (labeler.models.base.Adapter.parameters_json: sorted keys, `track` dumped as JSON)."""
    column = rows.column("parameters")
    encoded = pc.dictionary_encode(column.combine_chunks())
    track = spec.model_dump(mode="json")
    values = [json.dumps({**json.loads(text), "track": track}, sort_keys=True)
              for text in encoded.dictionary.to_pylist()]
    updated = pa.array(values, pa.string()).take(encoded.indices)
    return rows.set_column(rows.schema.get_field_index("parameters"),
                           rows.schema.field("parameters"), updated)


def _with_detections(rows: pa.Table, detections: pa.Array) -> pa.Table:
    index = rows.schema.get_field_index("detections")
    return rows.set_column(index, rows.schema.field(index).with_type(DETECTIONS), detections)


def _video_ranges(ids: list[str]) -> list[tuple[int, int]]:
    """[first, last) row ranges of each run of equal ids."""
    ranges, first = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[first]:
            ranges.append((first, k))
            first = k
    return ranges


def count_tracks(rows: pa.Table) -> int:
    """The tracks in `rows` (as add_track_ids left them): distinct (video, track_id) pairs."""
    detections = rows.column("detections").combine_chunks()
    track_ids = pc.list_flatten(detections).field("track_id")  # in step with the parents
    videos = rows.column("id").take(pc.list_parent_indices(detections))
    pairs = pa.table({"id": videos, "track_id": track_ids}).filter(pc.is_valid(track_ids))
    return pairs.group_by(["id", "track_id"]).aggregate([]).num_rows
