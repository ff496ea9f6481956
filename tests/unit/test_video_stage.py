"""The video decode stage without Ray: rows and their parts, clips, error rows; and what it
stands on: clip grouping, frame scaling, open_input, video listings, the job's defaults."""

from __future__ import annotations

import io

import numpy as np
import pytest

from labeler.config import ClipSpec, InputSpec, SpecError, load_job_spec
from labeler.jobs.runner import JobSummary, run_job
from labeler.jobs.stages import TaskTransforms
from labeler.jobs.video import FRAME_ROWS, decode_video, video_rows
from labeler.media.clips import group_clips, scale_to_max_side
from labeler.media.video import SampledFrame, Sampling
from labeler.sinks.parquet import MissingParts
from labeler.sources import plan_source
from labeler.storage import byte_range_uri, missing_uri, open_input
from labeler.testing.videos import X264_GOP, encode_video, level_index


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    """30 frames at 10 fps (3 s), 64x48, a key frame every second."""
    return encode_video(tmp_path_factory.mktemp("v") / "v.mp4", "libx264", options=X264_GOP)


def _one(uri, prompt="describe"):
    return {"id": np.array(["clips/v.mp4"]), "uri": np.array([uri]), "shard": np.array([3]),
            "prompt": np.array([prompt])}


def test_frame_rows_are_batched_numbered_and_the_last_is_marked(h264):
    batches = list(decode_video(_one(h264), Sampling("all"), None, 10**8))
    assert [len(b["id"]) for b in batches] == [FRAME_ROWS, 30 - FRAME_ROWS]
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert rows["part_index"].tolist() == list(range(30))
    assert rows["last_part"].tolist() == [False] * 29 + [True]
    assert rows["frame_index"].tolist() == list(range(30))
    assert rows["timestamp_s"].tolist() == [i / 10 for i in range(30)]
    assert [level_index(p) for p in rows["image"]] == list(range(30))  # the frame it names
    assert set(rows["id"]) == {"clips/v.mp4"} and set(rows["shard"]) == {3}
    assert set(rows["prompt"]) == {"describe"}  # input columns ride along on every row
    assert set(rows["error"]) == {""} and (rows["decode_ms"] > 0).all()
    assert set(rows["width"]) == {64} and set(rows["height"]) == {48}
    assert np.isnan(rows["clip_start_s"]).all() and np.isnan(rows["clip_end_s"]).all()
    assert set(rows["video"]) == {'{"width": 64, "height": 48, "duration_s": 3.0, '
                                  '"fps": 10.0, "codec": "h264"}'}
    # Exactly one batch's worth: the held-back row is the last, no empty batch follows.
    (only,) = decode_video(_one(h264), Sampling("all", max_frames=FRAME_ROWS), None, 10**8)
    assert only["last_part"].tolist() == [False] * (FRAME_ROWS - 1) + [True]


def test_frames_skipped_by_min_change_leave_no_gap_in_the_parts(h264):
    """The job's sampling options reach the decoder: a fade of one grey step a frame with
    min_change between one and two steps labels every second frame, numbered 0.. without
    holes (the sink completes a video by its parts)."""
    sampling = InputSpec(path=h264, media="video",
                         sampling={"every_n_frames": 1, "min_change": 0.045}).sampling.sampling()
    rows = {k: np.concatenate([b[k] for b in decode_video(_one(h264), sampling, None, 10**8)])
            for k in ("frame_index", "part_index", "last_part", "image", "unchanged_frames")}
    assert rows["frame_index"].tolist() == list(range(0, 30, 2))
    # The 15 frames skipped are counted on the last row, for the job summary.
    assert rows["unchanged_frames"].tolist() == [0] * 14 + [15]
    assert [level_index(p) for p in rows["image"]] == list(range(0, 30, 2))
    assert rows["part_index"].tolist() == list(range(15))
    assert rows["last_part"].tolist() == [False] * 14 + [True]


def test_only_parts_yields_those_rows_one_per_batch_with_their_numbers(h264):
    """Labeling lost rows again: the video decodes as before and only the named rows go
    out, keeping their part_index (and last_part on the video's last row)."""
    wanted = MissingParts(gaps=(3, 17), from_part=28)
    batches = list(decode_video(_one(h264), Sampling("all"), None, 10**8,
                                only_parts={"clips/v.mp4": wanted}, rows_per_batch=1))
    assert [b["part_index"].tolist() for b in batches] == [[3], [17], [28], [29]]
    assert [b["frame_index"].tolist() for b in batches] == [[3], [17], [28], [29]]
    assert [level_index(b["image"][0]) for b in batches] == [3, 17, 28, 29]
    assert [b["last_part"].tolist() for b in batches] == [[False], [False], [False], [True]]
    # A video not named in only_parts gives all its rows.
    others = list(decode_video(_one(h264), Sampling("all"), None, 10**8,
                               only_parts={"another.mp4": wanted}))
    assert sum(len(b["id"]) for b in others) == 30


def test_clip_rows(h264):
    clip = ClipSpec(seconds=1.5, fps=2.0, max_side=32)
    # Frame sampling is ignored: clips are sampled at clip.fps. One clip per batch.
    batches = list(decode_video(_one(h264), Sampling("fps", fps=1), clip, 10**8))
    assert [b["part_index"].tolist() for b in batches] == [[0], [1]]
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert rows["clip_start_s"].tolist() == [0.0, 1.5] and rows["clip_end_s"].tolist() == [1.5, 3.0]
    assert [c.shape for c in rows["image"]] == [(3, 24, 32, 3)] * 2  # 0, 0.5, 1.0 s; 1.5 ...
    assert [level_index(c[-1]) for c in rows["image"]] == [10, 25]
    assert rows["frame_index"].tolist() == [-1, -1] and np.isnan(rows["timestamp_s"]).all()
    assert rows["width"].tolist() == [64, 64]  # the video's size, not the scaled frames'
    assert rows["last_part"].tolist() == [False, True]


def test_error_rows(h264, tmp_path):
    missing = list(video_rows(str(tmp_path / "gone.mp4"), Sampling("all"), None, 10**8,
                              TaskTransforms()))
    assert [r.error for r in missing] == ["cannot read input: No such file or directory"]
    too_big = list(video_rows(h264, Sampling("all"), None, 64 * 48 - 1, TaskTransforms()))
    assert [r.error for r in too_big] == [
        "video frames have 64x48 = 3072 pixels, over the limit of 3071"]
    nothing = list(video_rows(h264, Sampling("keyframes", start_s=2.5), None, 10**8,
                              TaskTransforms()))
    assert [r.error for r in nothing] == [
        "sampling selected no frame: keyframes from 2.5 s, video duration 3.000 s"]
    assert nothing[0].video and nothing[0].images is None
    # A placeholder per image column: an empty array with the dimensions of the good rows.
    (batch,) = decode_video(_one(str(tmp_path / "gone.mp4")), Sampling("all"),
                            ClipSpec(seconds=2), 10**8)
    assert batch["image"][0].shape == (0, 0, 0, 3) and batch["last_part"].tolist() == [True]


def test_a_frame_whose_transform_fails_is_an_error_row_and_the_video_goes_on(h264):
    class FailsOnFrame10(TaskTransforms):
        def apply(self, pixels):
            if level_index(pixels) == 10:
                raise RuntimeError("bad frame")
            return super().apply(pixels)

    rows = list(video_rows(h264, Sampling("fps", fps=1), None, 10**8, FailsOnFrame10()))
    assert [(r.frame_index, r.timestamp_s, r.error) for r in rows] == [
        (0, 0.0, ""), (10, 1.0, "preprocessing failed: RuntimeError: bad frame"), (20, 2.0, "")]


def _frames(times, side=8):
    return [SampledFrame(i, t, np.full((side, 2 * side, 3), i, np.uint8))
            for i, t in enumerate(times)]


def test_group_clips_windows_gaps_and_ends():
    clips = list(group_clips(_frames([0.0, 0.5, 1.0, 1.5, 4.0, 4.5]), 1.0, 100, 4.7))
    assert [(c.start_s, c.end_s, c.indices) for c in clips] == [
        (0.0, 1.0, [0, 1]), (1.0, 2.0, [2, 3]), (4.0, 4.7, [4, 5])]  # 2-4 s: no frame
    assert clips[0].pixels.shape == (2, 8, 16, 3) and clips[0].timestamps_s == [0.0, 0.5]
    # No duration: the window's end. Exact windows: 0.3 // 0.1 is 2.0 in floats.
    assert [(c.start_s, c.end_s) for c in group_clips(_frames([0.3]), 0.1, 100, None)] == [
        (pytest.approx(0.3), pytest.approx(0.4))]

    def cut_short():
        yield from _frames([0.0, 0.5, 1.0])
        raise RuntimeError("decoding stopped")

    got = []
    with pytest.raises(RuntimeError, match="decoding stopped"):
        for clip in group_clips(cut_short(), 1.0, 100, None):
            got.append(clip.indices)
    assert got == [[0, 1]]  # the interrupted clip is not yielded


def test_scale_to_max_side():
    image = np.zeros((48, 64, 3), np.uint8)
    assert scale_to_max_side(image, 64) is image
    assert scale_to_max_side(image, 32).shape == (24, 32, 3)
    assert scale_to_max_side(np.zeros((1, 1000, 3), np.uint8), 10).shape == (1, 10, 3)


def test_open_input_reads_a_byte_range_as_a_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    with open_input(byte_range_uri(str(path), 100, 50)) as f:
        assert f.read(10) == bytes(range(100, 110))
        assert f.seek(0, io.SEEK_END) == 50 and f.read() == b""
        f.seek(45)
        assert f.read(100) == bytes(range(145, 150))  # stops at the window's end
        f.seek(-50, io.SEEK_END)
        assert f.tell() == 0
    with open_input(byte_range_uri(str(path), 1000, 100)) as f:  # cut short: what there is
        assert f.read() == bytes(range(232, 256))
    with open_input(str(path)) as f:
        assert f.read() == path.read_bytes()
    with pytest.raises(FileNotFoundError, match="row 2 of the manifest has no uri"):
        open_input(missing_uri(str(tmp_path / "m.jsonl"), 2, "uri"))


def test_open_input_fetches_a_small_range_whole(tmp_path):
    """Up to `whole_up_to` bytes come in one read and are served from memory; larger ones
    stay ranged reads of what is asked. The bytes are the same either way."""
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    uri = byte_range_uri(str(path), 100, 50)
    with open_input(uri, whole_up_to=50) as whole, open_input(uri, whole_up_to=49) as ranged:
        assert isinstance(whole, io.BytesIO) and not isinstance(ranged, io.BytesIO)
        assert whole.read() == ranged.read() == bytes(range(100, 150))
        whole.seek(-5, io.SEEK_END)
        assert whole.read() == bytes(range(145, 150))
    with open_input(byte_range_uri(str(path), 1000, 100), whole_up_to=100) as cut_short:
        assert cut_short.read() == bytes(range(232, 256))


def test_video_listing_and_shards(tmp_path):
    for name in ["b.MKV", "a.mp4", "a.txt", "c.jpg", "notes.txt", "sub/e.webm", "f.mov"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"a cat" if name.endswith(".txt") else b"x")
    plan = plan_source(str(tmp_path), files_per_shard=2, media="video")
    assert [(i.id, i.shard) for i in plan.items] == [
        ("a.mp4", 0), ("b.MKV", 0), ("f.mov", 1), ("sub/e.webm", 1)]
    assert plan.items[0].metadata == {"caption": "a cat"}  # the .txt beside it
    assert [i.id for i in plan_source(str(tmp_path), 2).items] == ["c.jpg"]
    # Default shard sizes: 256 images, 4 videos (a shard is what a rerun resumes from).
    assert InputSpec(path=str(tmp_path), media="video").effective_files_per_shard == 4
    assert InputSpec(path=str(tmp_path)).effective_files_per_shard == 256
    assert InputSpec(path=str(tmp_path), media="video",
                     files_per_shard=9).effective_files_per_shard == 9


def test_a_folder_without_videos_fails_before_ray(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cat.jpg").write_bytes(b"x")
    spec = load_job_spec(None, input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                         media="video", task="detect", family="owlv2", model="unused",
                         labels=["cat"])
    with pytest.raises(SpecError, match="input.path: no video files found under"):
        run_job(spec, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_summary_speaks_of_videos_and_frames():
    summary = JobSummary(output="out", inputs=8, media="video", unit="frames", rows=17,
                         errors=4, skipped_inputs=0, wall_s=3.0, steady_images_per_s=12.5)
    first, second, *_ = summary.lines()
    assert first == "rows: 17 (8 videos, 0 already done), errors: 4"
    assert second.startswith("throughput: 12.5 frames/s steady")


def test_a_video_without_rows_says_what_was_asked_for():
    """Frame jobs quote their sampling; clip jobs their clip options (they ignore sampling)."""
    from labeler.jobs.video import _nothing_sampled
    from labeler.media.video import VideoInfo

    info = VideoInfo(width=64, height=48, duration_s=0.04, fps=25.0, codec="h264",
                     frame_count=None, rotation=0)
    assert _nothing_sampled(info, Sampling("fps", fps=1, start_s=2), None) == (
        "sampling selected no frame: fps from 2 s, video duration 0.040 s")
    assert _nothing_sampled(info, Sampling("fps", fps=1), ClipSpec(seconds=2.5, fps=4)) == (
        "no clip could be made: clips of 2.5 s at 4 fps, video duration 0.040 s")


def test_the_summary_counts_a_videos_skipped_frames_once_whatever_its_tasks():
    """Each task's copy of a video's last row carries the count; the first task's is added."""
    import pyarrow as pa

    from labeler.actors.predictor import OUTPUT_SCHEMA
    from labeler.jobs.runner import _count

    rows = [{"id": "v.mp4", "uri": "v.mp4", "task": kind, "task_name": name, "shard": 0,
             "part_index": part, "last_part": part == 1, "unchanged_frames": 7 * (part == 1)}
            for name, kind in (("detect", "detect"), ("caption", "caption")) for part in (0, 1)]
    lost = {"id": "w.mp4", "uri": "w.mp4", "task": "detect", "task_name": "detect", "shard": 0,
            "part_index": 0, "last_part": True, "error": "lost"}  # no count: null
    summary = JobSummary(output="out", inputs=2, media="video", unit="frames", min_change=0.03)
    _count(summary, pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), "detect")
    _count(summary, pa.Table.from_pylist([lost], schema=OUTPUT_SCHEMA), "detect")
    assert (summary.rows, summary.errors, summary.unchanged_frames) == (5, 1, 7)
    assert ("skipped 7 sampled frames that changed less than min_change 0.03 (no row)"
            in summary.lines())
    without = JobSummary(output="out", inputs=2, media="video", unit="frames")
    assert not any("min_change" in line for line in without.lines())
