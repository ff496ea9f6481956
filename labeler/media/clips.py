"""A video -> consecutive clips of sampled frames, streaming: one clip is held at a time.

Clip k covers [k * seconds, (k + 1) * seconds) of the stream's timeline (frame timestamps, see
labeler.media.video), the last one ending at the video's duration. The video is sampled once
at `fps` (Sampling mode "fps", so frames sit at multiples of 1 / fps from the first frame)
and each sampled frame goes to the clip its timestamp falls in; a clip is complete when a
frame of a later clip arrives or the video ends. A window that holds no sampled frame (only
possible when seconds * fps < 1, or across a long gap of a variable-rate video) gives no clip.

Frames are scaled so that their long side is at most `max_side` pixels (never enlarged), as
they decode: a clip's memory is T * max_side^2 * 3 / aspect bytes, whatever the video's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from labeler.media.video import SampledFrame, Sampling, VideoSource, exact, sample_video


@dataclass(frozen=True)
class Clip:
    """One clip: start_s inclusive, end_s exclusive (seconds); pixels (T, h, w, 3) uint8 RGB,
    the sampled frames in time order, scaled; indices and timestamps_s of those frames."""

    start_s: float
    end_s: float
    pixels: np.ndarray
    indices: list[int]
    timestamps_s: list[float]


def scale_to_max_side(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """(h, w, 3) uint8 -> the same scaled (bilinear) so that max(h, w) <= max_side, each side
    rounded and at least 1 pixel; returned as is when it already fits."""
    height, width = pixels.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return pixels
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def group_clips(frames: Iterable[SampledFrame], seconds: float, max_side: int,
                duration_s: float | None) -> Iterator[Clip]:
    """Sampled frames in time order -> the clips of `seconds` they fall in, each yielded as
    soon as a frame of a later clip arrives (the last one when the frames end). An exception
    raised by `frames` propagates; the clip it interrupted is not yielded (it is incomplete).
    duration_s: the video's duration, which caps the last clip's end (None: the window end)."""
    window, held = None, []
    length = exact(seconds)
    for frame in frames:
        k = int(exact(frame.timestamp_s) // length)  # exact: 1.0 // 0.1 is 9.0 in floats
        if window is not None and k != window:
            yield _clip(window, held, seconds, duration_s)
            held = []
        window = k
        held.append(frame._replace(pixels=scale_to_max_side(frame.pixels, max_side)))
    if held:
        yield _clip(window, held, seconds, duration_s)


def _clip(window: int, frames: list[SampledFrame], seconds: float,
          duration_s: float | None) -> Clip:
    end = (window + 1) * seconds
    if duration_s is not None and frames[-1].timestamp_s < duration_s < end:
        end = duration_s
    return Clip(start_s=window * seconds, end_s=end,
                pixels=np.stack([f.pixels for f in frames]),
                indices=[f.index for f in frames], timestamps_s=[f.timestamp_s for f in frames])


def sample_clips(source: VideoSource, seconds: float, fps: float, max_side: int,
                 duration_s: float | None = None) -> Iterator[Clip]:
    """The clips of a video (see the module docstring); raises as sample_video does, a
    VideoDecodeError after the complete clips before the damage."""
    return group_clips(sample_video(source, Sampling(mode="fps", fps=fps)), seconds, max_side,
                       duration_s)
