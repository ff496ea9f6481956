"""labeler.media.video on videos these tests encode with PyAV (labeler.testing.videos: frame i
is a solid grey that encodes i modulo 32, with a white marker at the top-left)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labeler.media import video
from labeler.media.image import MediaError
from labeler.media.video import (Sampling, SamplingCounts, VideoDecodeError, probe, sample_frames,
                                 sample_video)
from labeler.testing.videos import (FASTSTART, HEIGHT, LEVELS, MPEG4_QUALITY, VP9_GOP, WIDTH,
                                    X264_GOP, audio_only_wav, cut_at_keyframe, encode_video,
                                    level_index)

VFR_PTS_MS = [0, 100, 150, 400, 450, 1200, 1210, 1220, 2000, 2500]
VFR_GOP = {"x264-params": "keyint=4:min-keyint=4:scenecut=0"}  # key frames 0, 4, 8


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": encode_video(d / "h264.mp4", "libx264", options=X264_GOP, muxer_options=FASTSTART),
        "mpeg4": encode_video(d / "mpeg4.mp4", "mpeg4", options=MPEG4_QUALITY),
        "vp9": encode_video(d / "vp9.webm", "libvpx-vp9", options=VP9_GOP),
        "long": encode_video(d / "long.mp4", "libx264", count=80, options=X264_GOP),
        "vfr_mkv": encode_video(d / "vfr.mkv", "libx264", count=10, options=VFR_GOP,
                                pts_ms=VFR_PTS_MS),
        "vfr_mp4": encode_video(d / "vfr.mp4", "libx264", count=10, options=VFR_GOP,
                                pts_ms=VFR_PTS_MS),
        "rotated": encode_video(d / "rotated.mp4", "libx264", count=5, rotation=90),
    }


def _take(source, mode="all", **options):
    frames = list(sample_frames(source, mode, **options))
    for f in frames:  # content check: the pixels are those of the frame the index names
        assert f.pixels.dtype == np.uint8 and f.pixels.shape[2] == 3
        assert level_index(f.pixels) == f.index % LEVELS
    return [f.index for f in frames], [f.timestamp_s for f in frames]


@pytest.mark.parametrize(
    ("name", "codec", "frame_count"),
    [("h264", "h264", 30), ("mpeg4", "mpeg4", 30), ("vp9", "vp9", None)],
)
def test_probe_and_every_frame(videos, name, codec, frame_count):
    info = probe(videos[name])
    assert (info.width, info.height, info.codec, info.rotation) == (WIDTH, HEIGHT, codec, 0)
    assert info.duration_s == pytest.approx(3.0) and info.fps == pytest.approx(10.0)
    assert info.frame_count == frame_count
    indices, times = _take(videos[name])
    assert indices == list(range(30))
    assert times == [i / 10 for i in range(30)]


@pytest.mark.parametrize("name", ["h264", "mpeg4", "vp9"])
def test_fps_sampling_exact(videos, name):
    assert _take(videos[name], "fps", fps=1) == ([0, 10, 20], [0.0, 1.0, 2.0])
    # 2.5 fps: targets every 0.4 s land exactly on frames 4k (exact arithmetic, no drift).
    assert _take(videos[name], "fps", fps=2.5)[0] == list(range(0, 30, 4))
    # Targets 0.55, 1.55, 2.55 s -> the first frames at or after them.
    assert _take(videos[name], "fps", fps=1, start_s=0.55) == ([6, 16, 26], [0.6, 1.6, 2.6])


def test_every_n_uniform_max_and_range(videos):
    src = videos["h264"]
    assert _take(src, "every_n_frames", every_n_frames=7)[0] == [0, 7, 14, 21, 28]
    assert _take(src, "every_n_frames", every_n_frames=7, max_frames=2)[0] == [0, 7]
    # The middle frame of each of 4 equal parts of 30 frames.
    assert _take(src, "uniform", num_frames=4)[0] == [3, 11, 18, 26]
    assert _take(src, "uniform", num_frames=50)[0] == list(range(30))
    # Range: start inclusive, end exclusive; indices stay those of the whole video.
    in_range = list(range(5, 15))
    assert _take(src, start_s=0.5, end_s=1.5) == (in_range, [i / 10 for i in in_range])
    assert _take(src, "uniform", num_frames=2, start_s=1.0, end_s=2.0)[0] == [12, 17]
    assert _take(src, max_frames=3, start_s=2.95)[0] == []


# Frames 0-2 show scene 0, 3-6 scene 5, 7-9 scene 20: two cuts in a still camera.
HELD_SCENES = [0, 0, 0, 5, 5, 5, 5, 20, 20, 20]
# One grey step (LEVEL_STEP / 255 = 0.031 over the 11/12 of the frame outside the marker) is
# a change of 0.029, two steps 0.058: a threshold between them keeps every second frame of a
# slow fade only if it compares with the last frame kept, not the one just before.
BETWEEN_ONE_AND_TWO_STEPS = 0.045


def test_min_change_skips_frames_like_the_last_one_kept(videos, tmp_path):
    held = encode_video(tmp_path / "held.mp4", "libx264", count=10, options=X264_GOP,
                        contents=HELD_SCENES)
    counts = SamplingCounts()
    frames = list(sample_video(held, Sampling("all", min_change=BETWEEN_ONE_AND_TWO_STEPS),
                               counts=counts))
    assert [f.index for f in frames] == [0, 3, 7]  # the first frame, then each cut
    assert counts.unchanged == 7  # the 10 frames less the 3 kept
    assert [level_index(f.pixels) for f in frames] == [0, 5, 20]
    assert [f.timestamp_s for f in frames] == [0.0, 0.3, 0.7]
    # A slow fade: each frame one step from the one before, two from the last kept.
    fade = _take(videos["h264"], "all", min_change=BETWEEN_ONE_AND_TWO_STEPS)[0]
    assert fade == list(range(0, 30, 2))
    # It applies to the frames the mode selects (every 3rd: 3 steps apart, all kept) ...
    assert _take(videos["h264"], "every_n_frames", every_n_frames=3,
                 min_change=BETWEEN_ONE_AND_TWO_STEPS)[0] == list(range(0, 30, 3))
    # ... after max_frames; and a threshold no change reaches keeps the first frame alone.
    assert _take(videos["h264"], "all", max_frames=5,
                 min_change=BETWEEN_ONE_AND_TWO_STEPS)[0] == [0, 2, 4]
    assert _take(videos["h264"], "all", min_change=1.0)[0] == [0]


@pytest.mark.parametrize("name", ["h264", "vp9"])
def test_keyframes_only(videos, name):
    assert _take(videos[name], "keyframes") == ([0, 10, 20], [0.0, 1.0, 2.0])
    assert _take(videos[name], "keyframes", start_s=0.5, max_frames=1)[0] == [10]


@pytest.mark.parametrize("name", ["vfr_mkv", "vfr_mp4"])
def test_variable_frame_rate(videos, name):
    indices, times = _take(videos[name])
    assert indices == list(range(10))
    assert times == [ms / 1000 for ms in VFR_PTS_MS]
    assert _take(videos[name], "fps", fps=1)[0] == [0, 5, 8]
    # Targets every 0.25 s; the 0.45 -> 1.2 s gap holds several, which yield frame 5 once.
    assert _take(videos[name], "fps", fps=4)[0] == [0, 3, 5, 8, 9]
    assert _take(videos[name], "keyframes")[0] == [0, 4, 8]


def test_rotation_is_applied(videos):
    info = probe(videos["rotated"])
    assert (info.width, info.height, info.rotation) == (HEIGHT, WIDTH, 90)
    frames = list(sample_frames(videos["rotated"]))
    assert [f.index for f in frames] == list(range(5))
    for f in frames:
        assert f.pixels.shape == (WIDTH, HEIGHT, 3)
        # Turned 90 degrees counter-clockwise: the top-left marker is now at the bottom-left.
        assert f.pixels[-16:, :16].mean() > 240 and f.pixels[:16, :16].mean() < 240
        assert level_index(f.pixels) == f.index  # bottom-right: the old bottom-left, grey


class _SeekCounter:
    """Wraps the module's container opener to count seeks."""

    def __init__(self, monkeypatch):
        self.seeks = []
        real_open = video._open

        def counting_open(source):
            container = real_open(source)
            real_seek = container.seek

            def seek(offset, **kw):
                self.seeks.append(offset)
                return real_seek(offset, **kw)

            return _Proxy(container, seek=seek)

        monkeypatch.setattr(video, "_open", counting_open)


class _Proxy:
    def __init__(self, inner, **overrides):
        self._inner, self._overrides = inner, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._inner, name)


def test_seeks_when_it_skips_frames_with_the_same_frames(videos, monkeypatch):
    src = videos["long"]  # 8 s at 10 fps, a key frame every second
    straight = list(sample_video(src, Sampling("fps", fps=0.25), seek_min_skip_s=math.inf))
    counter = _SeekCounter(monkeypatch)
    seeking = list(sample_video(src, Sampling("fps", fps=0.25)))
    assert [f.index for f in seeking] == [f.index for f in straight] == [0, 40]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(seeking, straight))
    assert counter.seeks == [40 * 1024]  # mp4 time base 1/10240: frame 40 is 4 s
    counter.seeks.clear()
    # Key frames from 2 s: a seek to each (the first skips frames 1-19, the others 1-9 of a GOP).
    keyframes = Sampling("keyframes", start_s=2.0, max_frames=3)
    picked = list(sample_video(src, keyframes))
    assert [(f.index, level_index(f.pixels)) for f in picked] == [(20, 20), (30, 30), (40, 8)]
    assert counter.seeks == [20 * 1024, 30 * 1024, 40 * 1024]
    counter.seeks.clear()
    # 1 fps: each wanted frame is a key frame 0.9 s of frames after the last one decoded.
    assert [f.index for f in sample_frames(src, "fps", fps=1)] == list(range(0, 80, 10))
    assert counter.seeks == [k * 10 * 1024 for k in range(1, 8)]
    counter.seeks.clear()
    # 4 fps: the key frame before each wanted frame is at most 0.2 s ahead: decode through.
    assert len(list(sample_frames(src, "fps", fps=4))) == 32
    assert counter.seeks == []


@pytest.mark.parametrize("name", ["h264", "vp9"])
def test_truncated_video_yields_decoded_frames_then_error(videos, name):
    data = cut_at_keyframe(videos[name], 2)  # frames 0-19 intact, frame 20 cut short
    got = []
    stopped = r"decoding stopped after the frame at 1\.900 s"
    with pytest.raises(VideoDecodeError, match=stopped) as err:
        for frame in sample_frames(data):
            got.append((frame.index, level_index(frame.pixels)))
    assert got == [(i, i) for i in range(20)]
    assert err.value.stopped_at_s == pytest.approx(1.9)
    # Sampling that needs no frame after 1.0 s still reports the last whole frame, 1.9 s.
    got.clear()
    with pytest.raises(VideoDecodeError, match=stopped):
        for frame in sample_frames(data, "fps", fps=1):
            got.append(frame.index)
    assert got == [0, 10]
    # A range that ends before the damage is complete: no error.
    assert _take(data, "fps", fps=2, end_s=1.5)[0] == [0, 5, 10]
    # min_change over the damaged fade: the kept frames up to the damage, then the same error
    # (frames it skips are not taken for frames lost to the damage).
    got.clear()
    with pytest.raises(VideoDecodeError, match=stopped):
        for frame in sample_frames(data, "all", min_change=BETWEEN_ONE_AND_TWO_STEPS):
            got.append(frame.index)
    assert got == list(range(0, 20, 2))


def test_bad_inputs_raise_media_error(videos, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for source in (b"", str(empty)):
        with pytest.raises(MediaError, match="empty file"):
            probe(source)
    with pytest.raises(MediaError, match="not a recognised video container"):
        list(sample_frames(b"this is plain text, not a video " * 20))
    with open(videos["mpeg4"], "rb") as fh:  # index (moov) at the end: a cut file cannot open
        cut = fh.read()[:-200]
    with pytest.raises(MediaError, match="not a recognised video container"):
        probe(cut)
    with pytest.raises(MediaError, match=r"no video stream \(streams: audio\)"):
        list(sample_frames(audio_only_wav()))


def test_file_like_source(videos):
    with open(videos["vp9"], "rb") as fh:
        assert probe(fh).codec == "vp9"
        assert [f.index for f in sample_frames(fh, "keyframes")] == [0, 10, 20]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "fps"}, "needs fps"),
        ({"mode": "uniform"}, "needs num_frames"),
        ({"mode": "all", "fps": 1.0}, "only used by sampling mode 'fps'"),
        ({"mode": "every_n_frames", "every_n_frames": 0}, "must be > 0"),
        ({"mode": "all", "start_s": 2.0, "end_s": 1.0}, "must be after start_s"),
        ({"mode": "bogus"}, "unknown sampling mode"),
        ({"mode": "all", "min_change": 0.0}, r"min_change must be in \(0, 1\]"),
        ({"mode": "all", "min_change": 1.5}, r"min_change must be in \(0, 1\]"),
    ],
)
def test_sampling_validation(options, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**options)


@pytest.mark.parametrize(("name", "codec", "options"), [
    # An MPEG program stream: a seek lands near the file's start, short of its key frame
    # (the sampler sought it again for ever).
    ("dvd.mpg", "mpeg2video", {"qmin": "1", "qmax": "4", "bf": "2", "g": "12"}),
    # AVI seeks by decode time: with B-frames a seek lands on another key frame (frames lost).
    ("xvid.avi", "mpeg4", {"qmin": "1", "qmax": "4", "bf": "2", "g": "12"}),
    # ... and times frames by their packets, in decode order: frames are counted instead.
    ("h264.avi", "libx264", X264_GOP),
])
def test_containers_that_seek_imprecisely_give_every_sampled_frame(tmp_path, name, codec,
                                                                   options):
    path = encode_video(tmp_path / name, codec, count=100, rate=25, options=options)
    assert _take(path, "fps", fps=1)[0] == [0, 25, 50, 75]
    assert _take(path, "every_n_frames", every_n_frames=30)[0] == [0, 30, 60, 90]
    assert _take(path)[0] == list(range(100))
    keys = _take(path, "keyframes")[0]  # _take checks each one's picture is its frame's
    assert keys[0] == 0 and len(keys) >= 100 // 12


def test_a_stream_that_starts_late_is_whole_when_its_header_declares_its_end_time(tmp_path):
    """Matroska declares the end time (6 s here), counted from 0, not the 1 s length."""
    path = encode_video(tmp_path / "late.mkv", "libx264", count=10, options=X264_GOP,
                        pts_ms=[5000 + 100 * i for i in range(10)])
    indices, times = _take(path, "fps", fps=5)  # raised VideoDecodeError ("truncated")
    assert indices == [0, 2, 4, 6, 8] and times == [0.0, 0.2, 0.4, 0.6, 0.8]


def _remux_shifted(src, dst, frames_cut, rate=10):
    """`src` remuxed with its times moved back by `frames_cut` frames: MP4 then writes an edit
    list that starts at that frame, as `ffmpeg -ss T -c copy` does when T is no key frame (the
    packets before it are demuxed, flagged discard, and decode to no frame)."""
    import av
    with av.open(src) as i, av.open(str(dst), "w") as o:
        si = i.streams.video[0]
        so = o.add_stream_from_template(si)
        shift = int(frames_cut / rate / si.time_base)
        for packet in i.demux(si):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = so
            o.mux(packet)
    return str(dst)


def test_an_edit_list_that_starts_after_the_first_frame(videos, tmp_path):
    cut = _remux_shifted(videos["h264"], tmp_path / "cut.mp4", frames_cut=3)
    frames = list(sample_frames(cut))  # raised "3 sampled frame(s) did not decode"
    # The 27 frames shown (those of the source from its frame 3), numbered and timed from 0.
    assert [f.index for f in frames] == list(range(27))
    assert [f.timestamp_s for f in frames] == [i / 10 for i in range(27)]
    assert [level_index(f.pixels) for f in frames] == list(range(3, 30))
    picked = list(sample_frames(cut, "fps", fps=1))  # was [10, 20] (0.7 s, 1.7 s), then error
    assert [(f.index, f.timestamp_s, level_index(f.pixels)) for f in picked] == [
        (0, 0.0, 3), (10, 1.0, 13), (20, 2.0, 23)]


def test_an_mpegts_stream_with_b_frames_seeks_to_the_key_frame_asked_for(tmp_path):
    # x264's default B-frames: a key frame's DTS is 2 frames before its PTS. TS seeks by DTS.
    path = encode_video(tmp_path / "bframes.ts", "libx264", count=80,
                        options={"x264-params": f"{X264_GOP['x264-params']}:bframes=3"})
    assert _take(path, "fps", fps=1) == (list(range(0, 80, 10)), [k * 1.0 for k in range(8)])
    assert _take(path, "fps", fps=0.25)[0] == [0, 40]  # was [0] and "1 sampled frame(s) ..."
    assert _take(path, "keyframes")[0] == list(range(0, 80, 10))


@pytest.mark.parametrize("name", ["ms.mkv", "ms.webm"])
def test_fps_sampling_of_times_rounded_to_milliseconds(tmp_path, name):
    """Matroska times frames in ms: 30 fps frames sit at 0, 33, 67, 100 ms ..."""
    codec, options = ("libvpx-vp9", VP9_GOP) if name.endswith("webm") else ("libx264", X264_GOP)
    path = encode_video(tmp_path / name, codec, count=30, rate=30, options=options)
    assert _take(path, "fps", fps=30)[0] == list(range(30))  # was 20 frames: 0, 2, 3, 5, ...
    assert _take(path, "fps", fps=15)[0] == list(range(0, 30, 2))  # was 0, 2, 5, 6, 8, 11 ...
    assert _take(path, "fps", fps=10)[0] == list(range(0, 30, 3))


def test_a_damaged_packet_mid_stream_loses_only_its_gop(tmp_path):
    """One packet the decoder refuses (bytes overwritten in the middle of an MP4): the frames
    before it, and those from the next key frame on, are yielded; the error says which."""
    import random

    import av
    src = encode_video(tmp_path / "src.mp4", "libx264", count=60, options=X264_GOP)
    with av.open(src) as container:
        packets = sorted((p.pos, p.size) for p in container.demux(container.streams.video[0])
                         if p.size)
    data = bytearray(open(src, "rb").read())
    pos, _ = packets[25]  # frame 25 in decode order, in the GOP of frames 20-29
    rnd = random.Random(0)
    for i in range(pos, pos + 64):
        data[i] = rnd.randrange(256)
    got = []
    with pytest.raises(VideoDecodeError, match=r"corrupt video: 1 damaged packet") as err:
        for frame in sample_frames(bytes(data)):
            got.append(frame.index)
            assert level_index(frame.pixels) == frame.index % LEVELS
    # Was: frames 0-22 only, "decoding stopped after the frame at 2.200 s".
    assert got[:23] == list(range(23)) and got[23:] == list(range(30, 60))
    assert err.value.stopped_at_s == pytest.approx(2.2)
