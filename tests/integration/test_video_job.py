"""Video jobs on a real local Ray: frame rows of an image task, error rows of bad videos,
another sampling mode and resume through the command line, and S3 / tar byte-range reads.

The videos are made here with PyAV (labeler.testing.videos): small, a few seconds at 10 fps,
so every job takes seconds. The exact frame times of every sampling mode are checked on the
media layer (tests/unit/test_video.py); here, that the job's rows carry them.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow.dataset as pads
import pytest

from labeler.cli import main
from labeler.media.video import sample_frames
from labeler.testing.videos import (FASTSTART, MPEG4_QUALITY, VP9_GOP, X264_GOP,
                                    audio_only_wav, cut_at_keyframe, encode_video)

LABELS = ["a photo of a cat", "a dog"]
H264_META = {"width": 64, "height": 48, "duration_s": 3.0, "fps": 10.0, "codec": "h264"}


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """Eight videos (two output shards of the default 4), plus files that are not videos."""
    d = tmp_path_factory.mktemp("videos")
    h264 = encode_video(d / "a_h264.mp4", "libx264", options=X264_GOP, muxer_options=FASTSTART)
    encode_video(d / "b_mpeg4.avi", "mpeg4", options=MPEG4_QUALITY, width=96, height=64)
    encode_video(d / "c_vp9.webm", "libvpx-vp9", options=VP9_GOP)
    encode_video(d / "d_rotated.mov", "libx264", count=12, rotation=90)
    (d / "e_truncated.mp4").write_bytes(cut_at_keyframe(h264, 2))  # frames 0-19 whole
    (d / "f_audio_only.mp4").write_bytes(audio_only_wav())
    (d / "g_empty.mp4").write_bytes(b"")
    (d / "h_unknown.mkv").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "notes.md").write_text("not a video")
    return d


def _run(*args) -> int:
    return main(["run", *args, "--no-progress"])


def _rows(out) -> list[dict]:
    return pads.dataset(out, format="parquet").to_table().to_pylist()


def test_frame_job_rows_errors_and_resume(ray_local, video_folder, tiny_owlv2, tmp_path,
                                          capsys):
    out = tmp_path / "out"
    command = ["--input", str(video_folder), "--media", "video", "--sample-fps", "1",
               "--task", "detect", "--family", "owlv2", "--model", tiny_owlv2,
               "--labels", ",".join(LABELS), "--threshold", "0.3", "--batch-size", "4",
               "--output", str(out)]
    assert _run(*command) == 0
    assert "rows: 17 (8 videos, 0 already done), errors: 4" in capsys.readouterr().out

    rows = _rows(out)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["id"], []).append(r)
    assert sorted(by_video) == sorted(p.name for p in video_folder.iterdir()
                                      if p.suffix != ".md")
    positions = {name: [(r["frame_index"], r["timestamp_s"]) for r in video_rows]
                 for name, video_rows in by_video.items()}
    assert positions == {
        "a_h264.mp4": [(0, 0.0), (10, 1.0), (20, 2.0)],
        "b_mpeg4.avi": [(0, 0.0), (10, 1.0), (20, 2.0)],
        "c_vp9.webm": [(0, 0.0), (10, 1.0), (20, 2.0)],
        "d_rotated.mov": [(0, 0.0), (10, 1.0)],
        # The frames that decoded, then the error row at the last whole frame.
        "e_truncated.mp4": [(0, 0.0), (10, 1.0), (None, 1.9)],
        "f_audio_only.mp4": [(None, None)], "g_empty.mp4": [(None, None)],
        "h_unknown.mkv": [(None, None)],
    }
    assert by_video["a_h264.mp4"][0]["video"] == H264_META
    assert by_video["b_mpeg4.avi"][0]["video"]["codec"] == "mpeg4"
    assert by_video["c_vp9.webm"][0]["video"]["codec"] == "vp9"
    sizes = {name: (r[0]["width"], r[0]["height"]) for name, r in by_video.items()}
    assert sizes["b_mpeg4.avi"] == (96, 64) and sizes["d_rotated.mov"] == (48, 64)
    for name in ("a_h264.mp4", "b_mpeg4.avi", "c_vp9.webm", "d_rotated.mov"):
        for r in by_video[name]:
            assert r["error"] is None and r["detections"] and r["task"] == "detect"
            assert r["uri"] == str(video_folder / name)
            assert r["clip_start_s"] is None and r["clip_end_s"] is None

    errors = {name: r[-1]["error"] for name, r in by_video.items() if r[-1]["error"]}
    assert errors["e_truncated.mp4"] == (
        "truncated or corrupt video: decoding stopped after the frame at 1.900 s; "
        "1 packet(s) cut short or corrupt")
    assert by_video["e_truncated.mp4"][-1]["video"] == H264_META
    assert errors["f_audio_only.mp4"] == "no video stream (streams: audio)"
    assert errors["g_empty.mp4"] == "empty file (0 bytes)"
    assert errors["h_unknown.mkv"].startswith("not a recognised video container")
    assert all(r[-1]["width"] is None and r[-1]["detections"] is None for name, r in
               by_video.items() if name in errors)

    # Every image task runs on sampled frames unchanged: the rows equal the adapter called
    # on the same frames as images.
    _assert_same_as_adapter(by_video, video_folder, tiny_owlv2)

    # Resume: shard 1 (videos 5-8) lost; the rerun labels only its four videos.
    names = sorted(p.name for p in (out / "detect").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    kept = (out / "detect" / "part-00000.parquet").stat().st_mtime_ns
    os.remove(out / "detect" / "part-00001.parquet")
    assert _run(*command) == 0
    assert "rows: 6 (8 videos, 4 already done), errors: 4" in capsys.readouterr().out
    assert (out / "detect" / "part-00000.parquet").stat().st_mtime_ns == kept
    again = _rows(out)
    assert [_identity(r) for r in again] == [_identity(r) for r in rows]


def _identity(row: dict) -> tuple:
    """What a rerun must reproduce exactly (scores may differ in the last bits with another
    batch composition)."""
    labels = [d["label"] for d in row["detections"] or []]
    return row["id"], row["frame_index"], row["timestamp_s"], row["error"], labels


def _assert_same_as_adapter(by_video, folder, model):
    import torch

    from labeler.config import load_job_spec
    from labeler.models.base import ImageInput
    from labeler.models.owlv2 import Owlv2Detector

    spec = load_job_spec(None, input=str(folder), output="unused", task="detect",
                         family="owlv2", model=model, labels=LABELS, threshold=0.3)
    adapter = Owlv2Detector(spec.tasks[0])
    adapter.setup(torch.device("cpu"))
    for name in ("b_mpeg4.avi", "d_rotated.mov"):
        frames = list(sample_frames(str(folder / name), "fps", fps=1))
        direct = adapter([ImageInput(f.pixels, f.pixels.shape[1], f.pixels.shape[0])
                          for f in frames])
        for row, expected in zip(by_video[name], direct, strict=True):
            got = row["detections"]
            assert [d["label"] for d in got] == [d["label"] for d in expected["detections"]]
            for a, b in zip(got, expected["detections"]):
                for k in ("score", "x0", "y0", "x1", "y1"):
                    assert a[k] == pytest.approx(b[k], abs=1e-4)


def test_every_n_frames_with_a_range_through_the_cli(ray_local, video_folder, tiny_owlv2,
                                                     tmp_path, capsys):
    """Another sampling mode and a time range, end to end; one past the range's end gives an
    error row. (Each mode's exact frames: tests/unit/test_video.py.)"""
    out = tmp_path / "out"
    code = _run("--input", str(video_folder / "[ad]_*"), "--media", "video",
                "--every-n-frames", "4", "--start-s", "1.5", "--end-s", "2.5",
                "--max-frames", "2", "--task", "detect", "--family", "owlv2",
                "--model", tiny_owlv2, "--labels", "a dog", "--output", str(out))
    assert code == 0
    assert "rows: 3 (2 videos, 0 already done), errors: 1" in capsys.readouterr().out
    rows = _rows(out)
    assert [(r["id"], r["frame_index"], r["timestamp_s"]) for r in rows] == [
        ("a_h264.mp4", 16, 1.6), ("a_h264.mp4", 20, 2.0), ("d_rotated.mov", None, None)]
    assert rows[-1]["error"] == ("sampling selected no frame: every_n_frames from 1.5 s to "
                                 "2.5 s, video duration 1.200 s")
    assert json.loads((out / "_SUCCESS").read_text())["unit"] == "frames"


def test_frames_min_change_skipped_are_counted_in_the_summary(ray_local, video_folder,
                                                              tiny_owlv2, tmp_path, capsys):
    """The fade of a_h264.mp4 (one grey step a frame) with min_change between one and two
    steps: every second frame labeled, the other 15 counted as skipped, on the command's
    output and in _SUCCESS; the count rides on routing columns and is not written."""
    out = tmp_path / "out"
    code = _run("--input", str(video_folder / "a_*"), "--media", "video",
                "--every-n-frames", "1", "--min-change", "0.045", "--task", "detect",
                "--family", "owlv2", "--model", tiny_owlv2, "--labels", "a dog",
                "--output", str(out))
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows: 15 (1 videos, 0 already done), errors: 0" in printed
    assert "skipped 15 sampled frames that changed less than min_change 0.045 (no row)" in printed
    assert [r["frame_index"] for r in _rows(out)] == list(range(0, 30, 2))
    assert "unchanged_frames" not in pads.dataset(out, format="parquet").schema.names
    assert json.loads((out / "_SUCCESS").read_text())["unchanged_frames"] == 15


@pytest.mark.parametrize("read_whole_up_to", [0, None], ids=["by-range", "whole"])
def test_s3_videos_and_tar_members_are_planned_and_read(s3_bucket, s3_env,
                                                        video_folder, tmp_path,
                                                        read_whole_up_to, monkeypatch):
    """Videos under s3:// and inside a WebDataset tar (a byte range) are listed as video
    inputs and decode through open_input, frame for frame as from the local file: read by
    range, or fetched whole (small videos, the default: VIDEO_READ_WHOLE_BYTES)."""
    import io
    import tarfile

    from labeler.jobs import video
    from labeler.jobs.stages import TaskTransforms
    from labeler.jobs.video import video_rows
    from labeler.media.video import Sampling
    from labeler.sources import plan_source

    if read_whole_up_to is not None:
        monkeypatch.setattr(video, "VIDEO_READ_WHOLE_BYTES", read_whole_up_to)
    local = str(video_folder / "c_vp9.webm")
    assert os.path.getsize(local) < video.VIDEO_READ_WHOLE_BYTES or read_whole_up_to == 0
    data = open(local, "rb").read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in (("000.txt", b"a grey clip"), ("000.webm", data),
                              ("001.jpg", b"not a video")):
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="v/c_vp9.webm", Body=data)
    client.put_object(Bucket=s3_bucket, Key="v/shard.tar", Body=buf.getvalue())
    (tmp_path / "shard.tar").write_bytes(buf.getvalue())

    items = plan_source(f"s3://{s3_bucket}/v", 4, media="video").items
    assert [(i.id, i.metadata) for i in items] == [
        ("c_vp9.webm", {}), ("shard.tar/000", {"caption": "a grey clip"})]
    (local_member,) = plan_source(str(tmp_path / "shard.tar"), 4, media="video").items

    def frames(uri):
        rows = list(video_rows(uri, Sampling("fps", fps=2), None, 10**8, TaskTransforms()))
        assert all(r.error == "" for r in rows), rows[-1].error
        return [(r.frame_index, r.timestamp_s, r.images["image"].tobytes()) for r in rows]

    expected = frames(local)
    assert len(expected) == 6
    for uri in (items[0].uri, items[1].uri, local_member.uri):
        assert frames(uri) == expected, uri

    # Bad objects give their one error row either way (read whole or by range).
    for key, body, reason in (("bad/empty.mp4", b"", "empty file (0 bytes)"),
                              ("bad/junk.mp4", b"not a video at all" * 64,
                               "not a recognised video container")):
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
        (row,) = list(video_rows(f"s3://{s3_bucket}/{key}", Sampling("fps", fps=2), None,
                                 10**8, TaskTransforms()))
        assert row.error.startswith(reason), row.error
    missing = list(video_rows(f"s3://{s3_bucket}/bad/none.mp4", Sampling("fps", fps=2), None,
                              10**8, TaskTransforms()))
    assert len(missing) == 1 and missing[0].error.startswith("cannot read input"), missing


def test_clip_captions_equal_the_documented_single_video_usage(ray_local, video_folder,
                                                               tiny_model, tmp_path):
    """video-caption on the tiny Qwen2-VL: a row per clip with its window, and each text is
    what the documented usage says for the same frames (sampled at the clip fps, scaled as
    the job scales them). The truncated video keeps its whole clips and ends in an error row."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from labeler.config import load_job_spec
    from labeler.jobs.runner import run_job
    from labeler.media.clips import scale_to_max_side

    model = tiny_model("qwen2_vl")
    spec = load_job_spec(None, input=str(video_folder / "[ae]_*.mp4"), output=str(tmp_path / "out"),
                         media="video", task="video-caption", family="qwen2_vl", model=model,
                         clip_seconds=1.0, clip_fps=2.0, max_new_tokens=6, batch_size=2)
    spec = spec.model_copy(update={"input": spec.input.model_copy(
        update={"clip": spec.input.clip.model_copy(update={"max_side": 40})})})
    summary = run_job(spec, progress=False)
    assert (summary.rows, summary.errors, summary.unit) == (5, 1, "clips")

    rows = _rows(tmp_path / "out")
    assert [(r["id"], r["clip_start_s"], r["clip_end_s"], r["frame_index"]) for r in rows] == [
        ("a_h264.mp4", 0.0, 1.0, None), ("a_h264.mp4", 1.0, 2.0, None),
        ("a_h264.mp4", 2.0, 3.0, None), ("e_truncated.mp4", 0.0, 1.0, None),
        ("e_truncated.mp4", None, None, None)]
    assert rows[-1]["error"].startswith("truncated or corrupt video: decoding stopped after "
                                        "the frame at 1.900 s")
    assert all((r["width"], r["height"], r["video"]) == (64, 48, H264_META) for r in rows[:4])

    processor = AutoProcessor.from_pretrained(model)
    qwen = Qwen2VLForConditionalGeneration.from_pretrained(model).eval()
    prompt = "Describe this video in one sentence."  # the task's default prompt
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    frames = list(sample_frames(str(video_folder / "a_h264.mp4"), "fps", fps=2.0))
    for k, row in enumerate(rows[:3]):
        clip = np.stack([scale_to_max_side(f.pixels, 40) for f in frames
                         if k <= f.timestamp_s < k + 1])
        assert clip.shape == (2, 30, 40, 3)
        inputs = processor(text=[chat], videos=[clip], do_sample_frames=False,
                           return_tensors="pt")
        with torch.no_grad():
            out = qwen.generate(**inputs, max_new_tokens=6, do_sample=False)
        text = processor.batch_decode(out[:, inputs.input_ids.shape[1]:],
                                      skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)[0]
        assert (row["text"], row["prompt"]) == (text, prompt)
        assert row["text"]
    assert rows[0]["text"] == rows[3]["text"]  # the same frames in both files


def test_tracked_frames_carry_track_ids_linked_per_video(ray_local, video_folder, tiny_owlv2,
                                                         tmp_path, capsys, s3_bucket):
    """--track: each video's boxes carry the ids link_tracks gives them, frame by frame in
    time order, videos apart; the spec is stored with the rows and is part of the job. The
    tracks export as MOT (to S3) and Label Studio video tasks, and score MOTA and IDF1 1
    against their own MOT export read back from S3."""
    from labeler.config import TrackingSpec
    from labeler.tracking import NO_TRACK, link_tracks

    out = tmp_path / "out"
    command = ["--input", str(video_folder / "[ad]_*"), "--media", "video",
               "--every-n-frames", "2", "--task", "detect", "--family", "owlv2",
               "--model", tiny_owlv2, "--labels", ",".join(LABELS), "--threshold", "0.3",
               "--batch-size", "4", "--output", str(out)]
    assert _run(*command, "--track", "--track-max-missed", "1") == 0
    rows = _rows(out)
    tracks = len({(r["id"], d["track_id"]) for r in rows for d in r["detections"]})
    assert f"tracks: {tracks} in task detect's videos labeled in this run" in \
        capsys.readouterr().out
    assert json.loads((out / "_SUCCESS").read_text())["tracks"] == {"detect": tracks}
    spec = TrackingSpec(max_missed=1)
    assert all(json.loads(r["parameters"])["track"] == spec.model_dump() for r in rows)
    longest = 0
    for video in ("a_h264.mp4", "d_rotated.mov"):
        frames = [r for r in rows if r["id"] == video]
        assert [r["frame_index"] for r in frames] == sorted(r["frame_index"] for r in frames)
        boxes = [d for r in frames for d in r["detections"]]
        starts = np.cumsum([0] + [len(r["detections"]) for r in frames])
        labels = np.array([LABELS.index(d["label"]) for d in boxes])
        expected = link_tracks(np.array([[d[k] for k in ("x0", "y0", "x1", "y1")]
                                         for d in boxes]), np.array([d["score"] for d in boxes]),
                               labels, starts, spec)
        assert [d["track_id"] or NO_TRACK for d in boxes] == expected.tolist()
        assert expected.min() == 1  # every box is in a track when any box may start one
        longest = max(longest, np.bincount(expected).max())
    assert longest >= 3  # the tiny model's boxes on these slow fades do link across frames

    # The tracks export as MOT sequences: a line per box, on its frame of the whole video.
    assert main(["export", str(out), "--format", "mot", "--out", str(tmp_path / "mot")]) == 0
    for video in ("a_h264.mp4", "d_rotated.mov"):
        lines = (tmp_path / "mot" / video / "gt" / "gt.txt").read_text().splitlines()
        expected = sorted((r["frame_index"] + 1, d["track_id"]) for r in rows
                          if r["id"] == video for d in r["detections"])
        assert [tuple(map(int, line.split(",")[:2])) for line in lines] == expected
    # ... and as Label Studio video tasks: a region per track, a keyframe per box.
    assert main(["export", str(out), "--format", "label-studio", "--out",
                 str(tmp_path / "ls")]) == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["data"]["labeler_id"] for t in tasks] == ["a_h264.mp4", "d_rotated.mov"]
    for task in tasks:
        boxes = [d for r in rows if r["id"] == task["data"]["labeler_id"]
                 for d in r["detections"]]
        regions = task["predictions"][0]["result"]
        assert [r["id"] for r in regions] == [f"track{k}" for k in
                                              range(1, max(d["track_id"] for d in boxes) + 1)]
        assert sum(len(r["value"]["sequence"]) for r in regions) == len(boxes)
    # ... and written to S3 as MOT ground truth, they are what the job's tracks score 1 on.
    mot = f"s3://{s3_bucket}/mot"
    assert main(["export", str(out), "--format", "mot", "--out", mot]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--mot", mot]) == 0
    printed = capsys.readouterr().out
    assert "videos evaluated: 2;" in printed
    # (MOTP, the mean IoU of the matches, is under 1: the export's 3-decimal pixels change
    # the IoU of the random model's sliver boxes.)
    assert re.search(r"\n  all +\d+ +\d+ +1\.000 +1\.000 +0 +0 +0 +0\.9\d\d\n", printed), printed

    # Other tracking settings are another job: the rerun is refused, naming the field.
    assert _run(*command, "--track-iou", "0.5") == 2
    assert ("tasks.0.track.iou: the default there, 0.5 now; tasks.0.track.max_missed: 1 "
            "there, the default now") in capsys.readouterr().err


def test_labeler_track_links_a_finished_job_which_a_tracked_run_then_resumes(
        ray_local, video_folder, tiny_owlv2, tmp_path, capsys, s3_bucket):
    """A job labeled without tracking, linked afterwards by `labeler track` into a copy on
    S3: the copy is what `labeler run --track` with those settings writes, so that run
    finds nothing to label."""
    from labeler.config import TrackingSpec
    from labeler.storage import filesystem_for
    from labeler.tracking import NO_TRACK, link_tracks

    command = ["--input", str(video_folder / "[ad]_*"), "--media", "video",
               "--every-n-frames", "3", "--task", "detect", "--family", "owlv2",
               "--model", tiny_owlv2, "--labels", ",".join(LABELS), "--threshold", "0.3"]
    tracked = f"s3://{s3_bucket}/tracked"
    assert _run(*command, "--output", str(tmp_path / "plain")) == 0
    assert main(["track", str(tmp_path / "plain"), "--out", tracked,
                 "--max-missed", "2", "--across-labels"]) == 0
    capsys.readouterr()
    assert _run(*command, "--track", "--track-max-missed", "2", "--track-across-labels",
                "--output", tracked) == 0
    assert "rows: 0 (2 videos, 2 already done), errors: 0" in capsys.readouterr().out

    spec = TrackingSpec(max_missed=2, across_labels=True)
    fs, path = filesystem_for(tracked)
    rows = pads.dataset(path, format="parquet", filesystem=fs).to_table().to_pylist()
    for video in ("a_h264.mp4", "d_rotated.mov"):
        frames = [r for r in rows if r["id"] == video]
        boxes = [d for r in frames for d in r["detections"]]
        expected = link_tracks(np.array([[d[k] for k in ("x0", "y0", "x1", "y1")]
                                         for d in boxes]), np.array([d["score"] for d in boxes]),
                               np.array([LABELS.index(d["label"]) for d in boxes]),
                               np.cumsum([0] + [len(r["detections"]) for r in frames]), spec)
        assert [d["track_id"] or NO_TRACK for d in boxes] == expected.tolist()
        assert all(json.loads(r["parameters"])["track"] == spec.model_dump() for r in frames)
