"""Exports of a tracked video job's tracks: MOTChallenge sequences (`--format mot`), Label
Studio video tasks, track ids in COCO, and the tracks `labeler stats` counts. The job output
is written by the job's own sink, which links each video's boxes into tracks as it commits
them (labeler.tracking)."""

import json

import pyarrow as pa
import pytest
from test_export import _export, _record

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.cli import main
from labeler.config import TrackingSpec
from labeler.sinks.parquet import ShardedParquetSink
from labeler.tracking import add_track_ids

TRACK = TrackingSpec(new_track_score=0.5)
PARAMS = {"labels": ["car", "person"], "threshold": 0.1, "track": TRACK.model_dump()}
VIDEO_A = {"width": 64, "height": 48, "duration_s": 4.0, "fps": 10.0, "codec": "h264"}
VIDEO_B = {"width": 32, "height": 32, "duration_s": 1.0, "fps": None, "codec": "vp9"}


def _frames(id_, video, size, frames, shard, params=PARAMS):
    """A video's rows: frames = [(frame_index, boxes or an error)], in time order."""
    rows = []
    for part, (index, boxes) in enumerate(frames):
        error = boxes if isinstance(boxes, str) else None
        rows.append(_record(id_, f"/videos/{id_}", "detect", "detect", params,
                            None if error else size, None if error else boxes,
                            frame_index=None if error else index, timestamp_s=index / 10,
                            video=video, error=error, shard=shard, part_index=part,
                            last_part=part == len(frames) - 1))
    return rows


def _job(root, params=PARAMS, track=TRACK, identity=None):
    a = _frames("cam/a.mp4", VIDEO_A, (64, 48), [
        (0, [("car", 0.9, 0, 0, 10, 10), ("person", 0.8, 30, 20, 40, 40)]),
        (10, [("person", 0.7, 31, 20, 41, 40), ("car", 0.6, 2, 0, 12, 10),
              ("car", 0.2, 50, 40, 60, 48)]),  # scored under new_track_score: no track
        (20, [("car", 0.3, 4, 0, 14, 10)]),  # low, but it continues the car's track
        (30, "truncated or corrupt video: decoding stopped after the frame at 2.0 s")], 0,
        params)
    b = _frames("b.mp4", VIDEO_B, (32, 32), [(0, [("car", 0.9, 1, 1, 11.5, 11.25)]),
                                            (5, [("car", 0.9, 1, 1, 11.5, 11.25)])], 1, params)
    finalize = {"detect": lambda rows: add_track_ids(rows, track)} if track else None
    sink = ShardedParquetSink(root, {0: 1, 1: 1}, ["detect"], "fingerprint", finalize=finalize,
                              identity=identity)
    sink.add(pa.Table.from_pylist(a + b, schema=OUTPUT_SCHEMA))
    sink.finish({"rows": len(a) + len(b)})
    return str(root)


@pytest.fixture(scope="module")
def tracked_job(tmp_path_factory):
    return _job(tmp_path_factory.mktemp("tracked") / "out")


def test_mot_sequences_hold_each_videos_tracked_boxes(tracked_job, tmp_path, capsys):
    out = tmp_path / "mot"
    code, printed, _ = _export(capsys, tracked_job, "--format", "mot", "--out", out)
    assert code == 0
    assert "videos: 2; skipped 1 boxes in no track (track_id null)\n" in printed
    assert "skipped 1 error rows" in printed and "frames: 5, boxes: 7\n" in printed
    assert f"output: {out / 'seqmap.txt'}" in printed
    # Files in output order: b.mp4's shard 1 comes after cam/a.mp4's shard 0.
    assert (out / "seqmap.txt").read_text() == "name\ncam/a.mp4\nb.mp4\n"
    # frame = frame_index + 1; x, y, w, h; 1 = not ignored; class from 1; visibility 1.
    assert (out / "cam/a.mp4/gt/gt.txt").read_text() == (
        "1,1,0,0,10,10,1,1,1\n"
        "1,2,30,20,10,20,1,2,1\n"
        "11,1,2,0,10,10,1,1,1\n"
        "11,2,31,20,10,20,1,2,1\n"
        "21,1,4,0,10,10,1,1,1\n")
    assert (out / "b.mp4/gt/gt.txt").read_text() == (
        "1,1,1,1,10.5,10.25,1,1,1\n"
        "6,1,1,1,10.5,10.25,1,1,1\n")
    assert (out / "b.mp4/gt/labels.txt").read_text() == "car\nperson\n"
    assert (out / "cam/a.mp4/seqinfo.ini").read_text() == (
        "[Sequence]\nname=cam/a.mp4\nimDir=img1\nframeRate=10\nseqLength=40\nimWidth=64\n"
        "imHeight=48\nimExt=.jpg\n")
    # No frame rate in the container: the length is one past the last labeled frame.
    assert "seqLength=6\n" in (out / "b.mp4/seqinfo.ini").read_text()
    assert "frameRate" not in (out / "b.mp4/seqinfo.ini").read_text()


def test_coco_numbers_tracks_over_the_file(tracked_job, tmp_path, capsys):
    code, _, _ = _export(capsys, tracked_job, "--format", "coco", "--out", tmp_path / "c")
    assert code == 0
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    frames = {im["id"]: (im["video_id"], im["frame_index"]) for im in coco["images"]}
    tracks = [(frames[a["image_id"]], a["bbox"][:2], a.get("track_id"))
              for a in coco["annotations"]]
    assert tracks == [
        (("cam/a.mp4", 0), [0, 0], 1), (("cam/a.mp4", 0), [30, 20], 2),
        (("cam/a.mp4", 10), [31, 20], 2), (("cam/a.mp4", 10), [2, 0], 1),
        (("cam/a.mp4", 10), [50, 40], None),
        (("cam/a.mp4", 20), [4, 0], 1),
        # b.mp4's track 1 is the file's third track.
        (("b.mp4", 0), [1, 1], 3), (("b.mp4", 5), [1, 1], 3)]


def test_mot_needs_tracked_video_frames(tmp_path, capsys):
    untracked = _job(tmp_path / "untracked", params={"labels": ["car", "person"]}, track=None)
    code, _, err = _export(capsys, untracked, "--format", "mot", "--out", tmp_path / "m")
    assert code == 2
    assert "labels video frames without tracking, so its boxes have no track ids" in err

    images = tmp_path / "images"
    sink = ShardedParquetSink(images, {0: 1}, ["detect"], "fingerprint")
    sink.add(pa.Table.from_pylist([_record("a.jpg", "/a.jpg", "detect", "detect", PARAMS,
                                           (8, 8), [])], schema=OUTPUT_SCHEMA))
    sink.finish({})
    code, _, err = _export(capsys, images, "--format", "mot", "--out", tmp_path / "m")
    assert code == 2 and "task 'detect' labels images; --format mot exports the tracks" in err

    code, _, err = _export(capsys, untracked, "--format", "mot", "--out", tmp_path / "m",
                           "--val-fraction", "0.2")
    assert code == 2 and "do not apply to mot" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 1024])
def test_stats_count_tracks_at_their_first_box_across_batches(tracked_job, batch_rows,
                                                              monkeypatch, capsys):
    import labeler.export.rows

    monkeypatch.setattr(labeler.export.rows, "READ_BATCH_ROWS", batch_rows)
    assert main(["stats", tracked_job]) == 0
    printed = capsys.readouterr().out
    # cam/a.mp4: the car (3 boxes) and the person (2), one car box in no track; b.mp4: a car.
    assert "  tracks: 3 of 7 boxes (2.3 a track); 1 boxes in no track\n" in printed
    assert "  label     boxes   images   tracks " in printed
    assert "  car           6        5        2 " in printed
    assert "  person        2        2        1 " in printed


def test_label_studio_gets_a_task_per_video_and_a_region_per_track(tracked_job, tmp_path,
                                                                   capsys):
    out = tmp_path / "ls"
    code, printed, _ = _export(capsys, tracked_job, "--format", "label-studio", "--out", out,
                               "--image-url-prefix", "s3://videos/")
    assert code == 0
    assert "videos: 2; skipped 1 boxes in no track (track_id null)\n" in printed
    # Each task brings its video's frame rate, which the Video tag reads.
    assert (out / "label_config.xml").read_text() == (
        '<View>\n  <Video name="video" value="$video" frameRate="$fps"/>\n'
        '  <VideoRectangle name="box" toName="video"/>\n'
        '  <Labels name="videoLabels" toName="video">\n'
        '    <Label value="car"/>\n    <Label value="person"/>\n  </Labels>\n</View>\n')
    a, b = json.loads((out / "tasks.json").read_text())
    assert a["data"] == {"video": "s3://videos/cam/a.mp4", "labeler_id": "cam/a.mp4",
                         "fps": 10.0}
    (prediction,) = a["predictions"]
    assert prediction["model_version"] == "owlv2:tiny"
    assert prediction["score"] == pytest.approx((0.9 + 0.6 + 0.3 + 0.8 + 0.7) / 5)

    def keyframe(frame, time, enabled, x, y, w, h):
        return {"frame": frame, "time": time, "enabled": enabled, "rotation": 0,
                "x": x, "y": y, "width": w, "height": h}

    car, person = prediction["result"]
    assert {k: car[k] for k in ("id", "from_name", "to_name", "type")} == {
        "id": "track1", "from_name": "box", "to_name": "video", "type": "videorectangle"}
    assert car["score"] == pytest.approx(0.6)
    # Percent of 64x48; frames from 1 at 10 fps; the last keyframe ends the box.
    assert car["value"] == {"framesCount": 40, "duration": 4.0, "labels": ["car"], "sequence": [
        keyframe(1, 0.0, True, 0.0, 0.0, 15.625, 20.8333),
        keyframe(11, 1.0, True, 3.125, 0.0, 15.625, 20.8333),
        keyframe(21, 2.0, False, 6.25, 0.0, 15.625, 20.8333)]}
    assert person["id"] == "track2" and person["value"]["labels"] == ["person"]
    assert [k["frame"] for k in person["value"]["sequence"]] == [1, 11]
    assert person["value"]["sequence"][0]["x"] == 46.875
    # b.mp4: no frame rate in its container, so no framesCount, and Label Studio's default
    # rate, 24 frames a second: its frame at 0.5 s is frame 13.
    assert b["data"]["fps"] == 24.0
    (region,) = b["predictions"][0]["result"]
    assert region["value"]["duration"] == 1.0 and "framesCount" not in region["value"]
    assert [(k["frame"], k["time"], k["enabled"]) for k in region["value"]["sequence"]] == [
        (1, 0.0, True), (13, 0.5, False)]


def test_label_studio_refuses_untracked_video_frames(tmp_path, capsys):
    untracked = _job(tmp_path / "untracked", params={"labels": ["car", "person"]}, track=None)
    code, _, err = _export(capsys, untracked, "--format", "label-studio", "--out",
                           tmp_path / "ls")
    assert code == 2
    assert "label the videos with --track (or track: in the task's spec), or export the " \
           "frames as COCO" in err
    assert not (tmp_path / "ls").exists()


def test_a_tracks_label_in_label_studio_is_its_most_frequent():
    from labeler.export.label_studio_video import track_label
    from labeler.export.rows import Box

    def boxes(*labels):
        return [Box(label, 0.5, 0, 0, 1, 1, 1) for label in labels]

    assert track_label(boxes("car", "truck", "truck")) == "truck"
    assert track_label(boxes("truck", "car", "car", "truck")) == "truck"  # first among equals


def test_mot_coordinates_keep_a_thousandth_of_a_pixel_on_large_frames():
    from labeler.export.categories import Categories
    from labeler.export.mot import gt_lines
    from labeler.export.rows import Box, Row

    row = Row("v.mp4", "/v.mp4", 3840, 2160,
              (Box("car", 0.9, 1234.5678, 0.0004, 3839.875, 2159.5, 7),), frame_index=99)
    text, untracked, interpolated = gt_lines([row], Categories(["car"], set()))
    assert (text, untracked, interpolated) == ("100,7,1234.568,0,2605.307,2159.5,1,1,1\n", 0, 0)


def test_mot_interpolate_fills_the_frames_between_a_tracks_boxes(tracked_job, tmp_path,
                                                                 capsys):
    out = tmp_path / "dense"
    code, printed, _ = _export(capsys, tracked_job, "--format", "mot", "--out", out,
                               "--interpolate")
    assert code == 0
    # The car: boxes on frames 0, 10, 20, so 9 + 9 between; the person: 0 and 10, 9 between;
    # b.mp4's car: 0 and 5, 4 between.
    assert "interpolated 31 boxes on the frames between a track's boxes" in printed
    assert "frames: 5, boxes: 38\n" in printed
    lines = (out / "cam/a.mp4/gt/gt.txt").read_text().splitlines()
    assert [line for line in lines if line.startswith("6,")] == [
        "6,1,1,0,10,10,1,1,1",  # half way from x 0 to x 2
        "6,2,30.5,20,10,20,1,2,1"]  # half way from x 30 to x 31
    assert [int(line.split(",")[0]) for line in lines if line.split(",")[1] == "1"] == list(
        range(1, 22))
    assert (out / "b.mp4/gt/gt.txt").read_text().splitlines()[2] == "3,1,1,1,10.5,10.25,1,1,1"
    code, _, err = _export(capsys, tracked_job, "--format", "coco", "--out", tmp_path / "c",
                           "--interpolate")
    assert code == 2 and "--interpolate applies to --format mot" in err


def test_mot_sequence_folders_stay_inside_the_output(tmp_path, capsys):
    """A video id is data (a manifest's `id` column, a tar member's name): `../` in it must
    not put a sequence folder outside --out (it wrote <out>/../../escaped.mp4/gt/gt.txt)."""
    root = tmp_path / "a" / "b" / "job"
    rows = _frames("../../../escaped.mp4", VIDEO_A, (64, 48),
                   [(0, [("car", 0.9, 0, 0, 10, 10)]), (10, [("car", 0.9, 1, 0, 11, 10)])], 0)
    sink = ShardedParquetSink(root, {0: 1}, ["detect"], "fingerprint",
                              finalize={"detect": lambda r: add_track_ids(r, TRACK)})
    sink.add(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
    sink.finish({"rows": len(rows)})
    out = tmp_path / "a" / "b" / "mot"
    code, _, _ = _export(capsys, root, "--format", "mot", "--out", out)
    assert code == 0
    escaped = list(tmp_path.rglob("escaped.mp4"))
    assert escaped and all(out in folder.parents for folder in escaped)
    assert (out / "escaped.mp4/gt/gt.txt").read_text().startswith("1,1,0,0,10,10,")
    assert (out / "seqmap.txt").read_text() == "name\nescaped.mp4\n"


def test_label_studio_frames_count_is_at_the_rate_the_keyframes_are_numbered_at():
    """A Video tag playing the video at another rate than its container's (frameRate="25"
    in the project, as /predict honours): framesCount counts frames at that rate too, so the
    last keyframe lies inside the video, not past framesCount."""
    from labeler.export.label_studio_video import video_prediction
    from labeler.export.rows import Box, Row

    video = {"width": 64, "height": 48, "duration_s": 3.0, "fps": 10.0, "codec": "h264"}
    frames = [Row("v", "v.mp4", 64, 48, (Box("car", 0.9, 0, 0, 10, 10, 1),), index, index / 10,
                  video) for index in (0, 10, 29)]
    at_25, _, _ = video_prediction(frames, "m", 25.0)
    (region,) = at_25["result"]
    assert [k["frame"] for k in region["value"]["sequence"]] == [1, 26, 73]
    assert region["value"]["framesCount"] == 75  # 3 s at 25 frames a second
    at_own, _, _ = video_prediction(frames, "m", 10.0)  # the export's rate: unchanged
    assert at_own["result"][0]["value"]["framesCount"] == 30
