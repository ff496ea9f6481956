"""Linking a video's boxes into tracks (labeler.tracking), and the specs that ask for it.

Each scene is a few frames of boxes written out by hand, with the track ids a person would
give them; what the tracker must get right is in each test's name.
"""

import re

import numpy as np
import pyarrow as pa
import pytest

from labeler.config import SpecError, TrackingSpec, load_job_spec
from labeler.schemas.record import RECORD_SCHEMA
from labeler.tracking import NO_TRACK, add_track_ids, count_tracks, link_tracks


def _track(frames, **spec):
    """frames: per labeled frame, a list of (label, score, x0, y0, x1, y1). Returns the
    track ids frame by frame, NO_TRACK as None."""
    boxes = [b for frame in frames for b in frame]
    starts = np.cumsum([0] + [len(frame) for frame in frames])
    names = sorted({b[0] for b in boxes})
    ids = link_tracks(np.array([b[2:] for b in boxes], dtype=float).reshape(-1, 4),
                      np.array([b[1] for b in boxes], dtype=float),
                      np.array([names.index(b[0]) for b in boxes], dtype=np.int64),
                      starts, TrackingSpec(**spec))
    return [[None if i == NO_TRACK else int(i) for i in ids[a:b]]
            for a, b in zip(starts[:-1], starts[1:])]


def _square(x, y, label="car", score=0.9, side=40):
    return (label, score, x, y, x + side, y + side)


def test_two_objects_keep_their_ids_frame_after_frame():
    frames = [[_square(10 * f, 0), _square(200 - 10 * f, 100)] for f in range(6)]
    assert _track(frames) == [[1, 2]] * 6


def test_ids_count_in_order_of_first_box_frame_then_place_in_the_row():
    frames = [[_square(0, 0)], [_square(100, 100), _square(2, 0)], [_square(4, 0)]]
    assert _track(frames) == [[1], [2, 1], [1]]


def test_a_predicted_box_follows_an_object_faster_than_its_own_width_overlaps():
    # 10 px a frame (IoU 0.6 frame to frame), then 25 px (IoU 0.23 < 0.3): the track's
    # velocity carries its box to where the object is, without the buffered round.
    xs = [0, 10, 20, 45, 70, 95, 120]
    assert _track([[_square(x, 0)] for x in xs], buffer=None) == [[1]] * 7
    # A box that stops makes the velocity guess wrong: the jump of 25 px then starts a new
    # track. So the tracker does predict.
    assert _track([[_square(x, 0)] for x in [0, 10, 10, 35]], buffer=None) == [
        [1], [1], [1], [2]]


def test_the_buffered_round_finds_a_box_that_moved_past_its_overlap():
    # A new track has no velocity yet: a first step of 25 px on a 40 px box is IoU 0.23.
    # Grown by half their size on every side (80 px boxes 25 px apart) they overlap by
    # IoU 0.52.
    frames = [[_square(0, 0)], [_square(25, 0)]]
    assert _track(frames, buffer=None) == [[1], [2]]
    assert _track(frames) == [[1], [1]]
    # The plain round comes first: two cars side by side keep their own boxes, though
    # grown boxes would pair them the other way round as well.
    side_by_side = [[_square(0, 0), _square(44, 0)], [_square(3, 0), _square(47, 0)]]
    assert _track(side_by_side) == [[1, 2], [1, 2]]


def test_a_track_survives_max_missed_frames_without_its_object():
    frames = [[_square(0, 0)], [_square(5, 0)], [], [], [_square(20, 0)]]
    assert _track(frames, max_missed=2) == [[1], [1], [], [], [1]]
    assert _track(frames, max_missed=1) == [[1], [1], [], [], [2]]
    # Boxes of another label do not keep a track alive or continue it.
    other = [[_square(0, 0)], [_square(5, 0)], [_square(10, 0, "bus")], [_square(15, 0)]]
    assert _track(other, max_missed=0) == [[1], [1], [2], [3]]


def test_labels_are_tracked_apart_even_where_their_boxes_coincide():
    frames = [[_square(0, 0, "car"), _square(0, 0, "bus", 0.8)],
              [_square(2, 0, "bus", 0.95), _square(2, 0, "car", 0.7)]]
    assert _track(frames) == [[1, 2], [2, 1]]


def test_across_labels_one_object_keeps_its_track_when_its_label_flips():
    # An open-vocabulary detector calls the same vehicle car, truck, car.
    frames = [[_square(0, 0, "car")], [_square(3, 0, "truck")], [_square(6, 0, "car")]]
    assert _track(frames) == [[1], [2], [1]]  # per label, the truck is another object
    assert _track(frames, across_labels=True) == [[1], [1], [1]]
    # Two objects side by side still keep theirs.
    pair = [[_square(0, 0, "car"), _square(100, 0, "bus")],
            [_square(102, 0, "car"), _square(2, 0, "bus")]]
    assert _track(pair, across_labels=True) == [[1, 2], [2, 1]]


def test_a_low_score_box_continues_a_track_but_never_starts_one():
    # ByteTrack's second association: an occluded object scores low for two frames.
    frames = [[_square(0, 0, score=0.9), _square(300, 0, score=0.2)],
              [_square(4, 0, score=0.3), _square(304, 0, score=0.2)],
              [_square(8, 0, score=0.25)],
              [_square(12, 0, score=0.8)]]
    assert _track(frames, new_track_score=0.5) == [[1, None], [1, None], [1], [1]]
    assert _track(frames) == [[1, 2], [1, 2], [1], [1]]


def test_a_video_of_low_scored_boxes_only_has_no_track():
    frames = [[_square(0, 0, score=0.2)], [], [_square(2, 0, score=0.3)]]
    assert _track(frames, new_track_score=0.5) == [[None], [], [None]]
    assert _track([[], []]) == [[], []]


def test_high_scored_boxes_are_matched_first():
    # Two boxes compete for one track: the low-scored one overlaps it more, but the
    # high-scored one overlaps it enough, and high boxes are assigned first.
    frames = [[_square(0, 0, score=0.9)],
              [_square(0, 1, score=0.3), _square(8, 0, score=0.9)]]
    assert _track(frames, new_track_score=0.5) == [[1], [None, 1]]
    assert _track(frames) == [[1], [1, 2]]  # one association: the best overlap wins


def test_the_assignment_is_optimal_not_greedy():
    # Track 1's best box (IoU 0.6, against 0.54 for its other one) is also track 2's only
    # one (0.33): greedy IoU matching would leave track 2 without a box. The optimal
    # assignment continues both.
    frames = [[_square(0, 0), _square(30, 0)], [_square(10, 0), _square(-12, 0)]]
    assert _track(frames, iou=0.2) == [[1, 2], [2, 1]]


def test_short_tracks_are_dropped_and_the_rest_renumbered():
    frames = [[_square(300, 300)], [_square(0, 0)], [_square(3, 0)], [_square(6, 0)]]
    assert _track(frames, min_length=2) == [[None], [1], [1], [1]]
    assert _track(frames) == [[1], [2], [2], [2]]


def _row(video, detections, frame):
    return {"id": video, "uri": f"/v/{video}", "task": "detect", "task_name": "detect",
            "model": "m", "model_family": "owlv2", "parameters": "{}", "frame_index": frame,
            "detections": None if detections is None else [
                {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
                for label, score, x0, y0, x1, y1 in detections],
            "error": "model failed: boom" if detections is None else None}


def _ids(table):
    return [None if d is None else [b["track_id"] for b in d]
            for d in table.column("detections").to_pylist()]


def test_rows_of_each_video_are_tracked_apart_and_error_rows_are_no_step():
    rows = pa.Table.from_pylist([
        _row("a.mp4", [_square(0, 0)], 0),
        _row("a.mp4", None, 1),  # an error row: not a frame the object was missed in
        _row("a.mp4", [_square(4, 0), _square(300, 0)], 2),
        _row("a.mp4", [], 3),  # labeled, no box: a miss
        _row("a.mp4", [_square(8, 0)], 4),  # so a new track, as max_missed is 0
        _row("a.mp4", [_square(10, 0)], 5),
        _row("b.mp4", [_square(8, 0)], 0),  # the same place in another video: its own track 1
        _row("b.mp4", [_square(9, 0)], 1),
    ], schema=RECORD_SCHEMA)
    tracked = add_track_ids(rows, TrackingSpec(max_missed=0, min_length=2))
    assert tracked.schema == RECORD_SCHEMA
    assert _ids(tracked) == [[1], None, [1, None], [], [2], [2], [1], [1]]
    # Everything else is as it was.
    assert tracked.drop_columns(["detections"]) == rows.drop_columns(["detections"])
    boxes = [[{k: v for k, v in b.items() if k != "track_id"} for b in d or []]
             for d in tracked.column("detections").to_pylist()]
    assert boxes == [[{k: v for k, v in b.items() if k != "track_id"} for b in d or []]
                     for d in rows.column("detections").to_pylist()]


def test_tracks_are_counted_per_video():
    rows = pa.Table.from_pylist([
        _row("a.mp4", [_square(0, 0), _square(100, 0)], 0), _row("a.mp4", None, 1),
        _row("a.mp4", [_square(2, 0), _square(300, 0, score=0.1)], 2),
        _row("b.mp4", [_square(0, 0)], 0), _row("b.mp4", [], 1)], schema=RECORD_SCHEMA)
    tracked = add_track_ids(rows, TrackingSpec(new_track_score=0.5))
    assert _ids(tracked) == [[1, 2], None, [1, None], [1], []]
    assert count_tracks(tracked) == 3  # a.mp4's 1 and 2, b.mp4's 1
    assert count_tracks(rows) == 0 and count_tracks(rows.slice(0, 0)) == 0


def test_a_shard_without_boxes_is_written_as_it_is():
    rows = pa.Table.from_pylist([_row("a.mp4", None, None)], schema=RECORD_SCHEMA)
    assert add_track_ids(rows, TrackingSpec()) == rows


def _spec(tmp_path, **overrides):
    fields = {"input": str(tmp_path), "output": str(tmp_path / "out"), "task": "detect",
              "family": "owlv2", "model": "m", "labels": ["cat"], "media": "video"}
    return load_job_spec(None, **{**fields, **overrides})


def test_a_dry_run_names_a_tasks_tracking(tmp_path):
    from labeler.jobs.runner import _task_line

    assert _task_line(_spec(tmp_path, track=True).tasks[0]).endswith("0 GPU; track {}")
    assert _task_line(_spec(tmp_path, track_max_missed=1).tasks[0]).endswith(
        '; track {"max_missed": 1}')
    assert _task_line(_spec(tmp_path).tasks[0]).endswith("0 GPU")


def test_track_flags_turn_tracking_on_and_set_its_fields(tmp_path):
    assert _spec(tmp_path).tasks[0].track is None
    assert _spec(tmp_path, track=True).tasks[0].track == TrackingSpec()
    assert _spec(tmp_path, track_iou=0.5, track_max_missed=1).tasks[0].track == TrackingSpec(
        iou=0.5, max_missed=1)
    assert _spec(tmp_path, track_across_labels=True).tasks[0].track == TrackingSpec(
        across_labels=True)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("tasks:\n- {task: detect, model: {family: owlv2, source: m}, "
                         "labels: [cat], track: {min_length: 3}}\n")
    spec = load_job_spec(spec_file, input=str(tmp_path), output=str(tmp_path / "o"),
                         media="video", track=True)
    assert spec.tasks[0].track == TrackingSpec(min_length=3)  # --track keeps the spec's


@pytest.mark.parametrize("overrides, message", [
    ({"media": "image", "track": True}, "tasks.0.track links boxes across a video's frames; "
                                        "set input.media: video"),
    ({"task": "caption", "family": "florence2", "labels": None, "track": True},
     "--track applies to box (detect, ground, detect-by-example) tasks, and the job has none"),
    ({"track_iou": 0.0}, "tasks.0.track.iou"),
    ({"track_max_missed": -1}, "tasks.0.track.max_missed"),
])
def test_bad_tracking_specs_are_refused_naming_the_field(tmp_path, overrides, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        _spec(tmp_path, **overrides)


def test_a_served_models_track_applies_to_its_video_requests_only():
    from labeler.serve.config import ServedModel

    model = {"family": "owlv2", "source": "m"}
    served = ServedModel(task="detect", model=model, labels=["cat"], track={"iou": 0.5})
    assert served.video_track == TrackingSpec(iou=0.5)
    # The model deployment runs the image task: its records' parameters name no track.
    assert served.task_spec().track is None
    default = ServedModel(task="ground", model=model)
    assert default.video_track == TrackingSpec()
    caption = ServedModel(task="caption", model={"family": "florence2", "source": "m"})
    assert caption.video_track is None
    with pytest.raises(ValueError, match="track applies to tasks detect, ground"):
        ServedModel(task="caption", model={"family": "florence2", "source": "m"}, track={})


@pytest.mark.parametrize("seed", range(5))
def test_tracks_on_random_boxes_keep_the_rules(seed):
    """Whatever the boxes: a track has one label, at most one box a frame, ids count 1, 2,
    ... in order of first box, and the same boxes give the same ids."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 12, 60)
    starts = np.concatenate([[0], np.cumsum(counts)])
    xy = rng.uniform(0, 200, (starts[-1], 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (starts[-1], 2))], axis=1)
    scores, labels = rng.uniform(0, 1, starts[-1]), rng.integers(0, 3, starts[-1])
    spec = TrackingSpec(new_track_score=0.4, max_missed=2, min_length=2)
    ids = link_tracks(boxes, scores, labels, starts, spec)
    assert np.array_equal(ids, link_tracks(boxes, scores, labels, starts, spec))
    frame = np.repeat(np.arange(len(counts)), counts)
    tracked = ids != NO_TRACK
    assert tracked.sum() > 0
    for track in np.unique(ids[tracked]):
        mine = ids == track
        assert len(set(labels[mine].tolist())) == 1
        assert len(set(frame[mine].tolist())) == mine.sum() >= 2
        assert scores[np.flatnonzero(mine)[0]] >= 0.4  # started by a high box
    first_seen = list(dict.fromkeys(ids[tracked].tolist()))
    assert first_seen == list(range(1, len(first_seen) + 1))
