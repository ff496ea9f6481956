"""A model actor that dies on a batch (as a segfault in native code or the OOM killer ends
it) is restarted and the batch retried a bounded number of times; then the inputs of the
dropped batch are labeled again one per batch, and only the input that kills the worker on
its own becomes an error row (a video: the lost frames are decoded and labeled again, and
only the frame that kills the worker is missing). The job completes with every input
exactly once."""

import os
import subprocess
import sys

import pyarrow.dataset as pads

from labeler.jobs.images import DECODE_BATCH
from labeler.jobs.runner import MODEL_BATCH_ATTEMPTS
from labeler.testing.faults import CRASH_ON_ENV
from labeler.testing.samples import make_sample_images


def test_a_batch_that_kills_its_actor_becomes_error_rows(tiny_owlv2, tmp_path):
    images = tmp_path / "images"
    make_sample_images(images, count=2 * DECODE_BATCH + 4, bad=False)  # 3 decode blocks
    out = tmp_path / "out"
    # A fresh Ray in a subprocess, so the crash marker reaches its workers' environment.
    env = {**os.environ, CRASH_ON_ENV: "sample_005"}
    run = subprocess.run(
        [sys.executable, "-m", "labeler.cli", "run", "--input", str(images), "--output", str(out),
         "--task", "detect", "--family", "owlv2", "--model", tiny_owlv2, "--labels", "a cat",
         "--batch-size", "2", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    rows = {r["id"]: r for r in pads.dataset(out, format="parquet").to_table().to_pylist()}
    assert sorted(rows) == sorted(p.name for p in images.iterdir())  # each input once
    lost = {i for i, r in rows.items() if r["error"] is not None}
    poison = next(p.name for p in images.iterdir() if "sample_005" in p.name)
    assert lost == {poison}  # its decode block's other inputs were relabeled
    assert rows[poison]["error"] == (
        f"not labeled: the model worker died {MODEL_BATCH_ATTEMPTS} times on this input alone "
        "(out of memory, or a crash in native code; or the task decoding it failed)")
    assert rows[poison]["detections"] is None
    assert all(rows[i]["detections"] is not None for i in set(rows) - lost)
    assert "errors: 1" in run.stdout and (out / "_SUCCESS").exists()
    assert "one per batch to find the input" in run.stderr


def test_a_video_frame_that_kills_its_actor_costs_that_frame_only(tiny_owlv2, tmp_path):
    """Video: the dropped batch's frames are decoded again and labeled one per batch; the
    other frames of that batch get their rows, and the video one error row for the frame
    that kills the worker on its own."""
    from labeler.testing.videos import X264_GOP, encode_video

    videos = tmp_path / "videos"
    videos.mkdir()
    encode_video(videos / "v.mp4", "libx264", count=30, options=X264_GOP)
    encode_video(videos / "w.mp4", "libx264", count=10, options=X264_GOP)
    out = tmp_path / "out"
    env = {**os.environ, CRASH_ON_ENV: "v.mp4#frame=12"}
    run = subprocess.run(
        [sys.executable, "-m", "labeler.cli", "run", "--input", str(videos), "--media", "video",
         "--every-n-frames", "1", "--output", str(out), "--task", "detect", "--family", "owlv2",
         "--model", tiny_owlv2, "--labels", "a cat", "--batch-size", "4", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    frames = {(r["id"], r["frame_index"]) for r in rows if r["error"] is None}
    assert frames == ({("v.mp4", i) for i in range(30) if i != 12}
                      | {("w.mp4", i) for i in range(10)})
    (error,) = [r for r in rows if r["error"] is not None]
    assert error["id"] == "v.mp4" and error["error"] == (
        f"not labeled: the model worker died {MODEL_BATCH_ATTEMPTS} times on frames of this "
        "video, each alone (out of memory, or a crash in native code; or the task decoding it "
        "failed)")
    assert "errors: 1" in run.stdout and (out / "_SUCCESS").exists()
    assert "one per batch to find the frame that kills the worker" in run.stderr
