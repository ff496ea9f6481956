"""Small videos made with PyAV, for tests and benchmarks, whose frames say which they are.

Frame i is a solid grey of level (i % LEVELS) * LEVEL_STEP (read back from the bottom-right
corner by `level_index`) with a white 16x16 marker at the top-left (it shows where a rotation
put it).
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT = 64, 48  # multiples of 16: whole macroblocks, no padding at the borders
LEVEL_STEP = 8  # grey level per frame index: 8 levels apart survive lossy coding
LEVELS = 32  # 32 * 8 = 256 levels: frame indices are told apart modulo 32
MARKER = 16  # side of the white marker, pixels
KEYINT = 10  # frames per GOP of the x264 and vp9 options below
X264_GOP = {"x264-params": f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0"}
VP9_GOP = {"g": str(KEYINT), "keyint_min": str(KEYINT), "deadline": "realtime", "cpu-used": "8"}
# mpeg4's default rate control drifts solid greys by up to 5 levels; cap the quantiser.
MPEG4_QUALITY = {"qmin": "1", "qmax": "4"}
# Key frame at the front of an mp4 file (the index goes first), so a truncated copy opens.
FASTSTART = {"movflags": "faststart"}


def frame_pixels(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """The (height, width, 3) uint8 RGB content of frame `index`."""
    pixels = np.full((height, width, 3), (index % LEVELS) * LEVEL_STEP, np.uint8)
    pixels[:MARKER, :MARKER] = 255
    return pixels


def encode_video(path: str | Path, codec: str, count: int = 30, rate: int = 10,
                 options: dict | None = None, pts_ms: list[int] | None = None,
                 rotation: int | None = None, muxer_options: dict | None = None,
                 width: int = WIDTH, height: int = HEIGHT, contents: list[int] | None = None) -> str:
    """Write `count` frames (frame_pixels) at `rate` frames per second; returns the path.

    pts_ms: explicit frame times in milliseconds (a variable frame rate). rotation: degrees
    counter-clockwise, stored as the container's display matrix. contents: frame i shows
    frame_pixels(contents[i]) instead of frame_pixels(i) (a scene held still, then cut)."""
    container = av.open(str(path), "w", options=muxer_options or {})
    stream = container.add_stream(codec, rate=rate, options=options or {})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if pts_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        stream.set_display_rotation(rotation)
    for i in range(count):
        content = i if contents is None else contents[i]
        frame = av.VideoFrame.from_ndarray(frame_pixels(content, width, height), format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()
    return str(path)


def level_index(pixels: np.ndarray) -> int:
    """The frame index modulo LEVELS that a frame's grey level encodes."""
    return round(float(pixels[-MARKER:, -MARKER:].mean()) / LEVEL_STEP) % LEVELS


def cut_at_keyframe(path: str | Path, keyframe_number: int) -> bytes:
    """The file's bytes up to 3 bytes into the packet of its keyframe_number-th key frame
    (0-based): the frames before that key frame decode, the rest is cut off."""
    with av.open(str(path)) as container:
        positions = [p.pos for p in container.demux(container.streams.video[0]) if p.is_keyframe]
    with open(path, "rb") as fh:
        return fh.read()[: positions[keyframe_number] + 3]


def audio_only_wav() -> bytes:
    """A valid container (WAV) holding 0.1 s of silence and no video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        silence = np.zeros((1, 800), np.int16)  # 0.1 s of mono samples at 8 kHz
        samples = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
        samples.sample_rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    return buf.getvalue()
