"""The pixels of a sampled row: an image file, or one frame of a video.

Images are read with labeler.storage.read_bytes (local paths, s3://, tar members, manifest
cells) and decoded with labeler.media.image.decode_image (EXIF orientation applied; JPEGs
reduced on load to the drawn size). Video rows name the video: a frame row's frame is found
by its index with labeler.media.video.sample_frames (every_n_frames = the index, so the
frame is exact whatever the timestamps), a clip row shows the first frame of its clip.
Video frames come with the container's rotation applied, as the job saw them.

Whatever cannot be read becomes Unavailable with the reason, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from labeler.jobs.video import open_video_source
from labeler.media.image import MediaError, decode_image
from labeler.media.video import SampledFrame, sample_frames
from labeler.preview.sample import SampledRow
from labeler.storage import read_bytes

# Images with more pixels are not decoded for a preview (the job's default input limit is
# 100 MP; each of LOAD_THREADS threads may hold one decoded image).
MAX_PIXELS = 250_000_000


class Unavailable(Exception):
    """A row whose image cannot be shown; the message is the reason."""


@dataclass(frozen=True)
class Loaded:
    """pixels: (h, w, 3) uint8 RGB of the whole image, possibly reduced; width, height: the
    full size in pixels that the row's boxes refer to; note: why the boxes are not drawn
    (the image changed since the job), else None."""

    pixels: np.ndarray
    width: int
    height: int
    note: str | None = None


def load_image(row: SampledRow, min_side: int) -> Loaded:
    """An image row's pixels, JPEGs decoded at a reduced scale whose long side stays >=
    min_side pixels; Unavailable with the reason when it cannot be read or decoded."""
    try:
        data = read_bytes(row.uri)
    except OSError as err:
        raise Unavailable(f"cannot read {row.uri}: {err.strerror or err}") from None
    try:
        decoded = decode_image(data, MAX_PIXELS, decode_min_side=min_side)
    except MediaError as err:
        raise Unavailable(str(err)) from None
    return _checked(row, decoded.pixels, decoded.width, decoded.height)


def load_video_rows(uri: str, rows: list[SampledRow]) -> Iterator[Loaded | Unavailable]:
    """The frames of frame and clip rows of the video at `uri`, one per row in order (the
    video is opened once); Unavailable in place of a frame that cannot be decoded."""
    try:
        source = open_video_source(uri)  # as the job opened it
    except OSError as err:
        reason = Unavailable(f"cannot read {uri}: {err.strerror or err}")
        yield from (reason for _ in rows)
        return
    try:
        for row in rows:
            try:
                frame = _frame_of(source, row)
            except MediaError as err:
                yield Unavailable(f"cannot decode the video: {err}")
                continue
            except OSError as err:
                yield Unavailable(f"cannot read {uri}: {err.strerror or err}")
                continue
            if frame is None:
                where = (f"frame {row.frame_index}" if row.is_frame
                         else f"frame at or after {row.clip_start_s:.3f} s")
                yield Unavailable(f"the video has no {where} now: it changed since the job")
            else:
                yield _checked(row, frame.pixels, frame.pixels.shape[1], frame.pixels.shape[0])
    finally:
        if not isinstance(source, str):
            source.close()


def _frame_of(source, row: SampledRow) -> SampledFrame | None:
    """The frame a video row shows, or None when the video has no such frame."""
    if row.is_frame:
        n = row.frame_index
        # Frames 0 and n (n > 0): decoding seeks from frame 0 to the key frame before n.
        frames = (sample_frames(source, "every_n_frames", every_n_frames=n, max_frames=2) if n
                  else sample_frames(source, "all", max_frames=1))
    else:
        frames = sample_frames(source, "all", start_s=max(0.0, row.clip_start_s), max_frames=1)
    try:
        for frame in frames:
            if not row.is_frame or frame.index == row.frame_index:
                return frame
    finally:
        frames.close()
    return None


def _checked(row: SampledRow, pixels: np.ndarray, width: int, height: int) -> Loaded:
    """Loaded at the decoded size; with a note when the row was labeled at another size
    (the file changed since the job: its boxes would be misplaced)."""
    if row.width is not None and row.height is not None and (width, height) != (row.width,
                                                                                row.height):
        return Loaded(pixels, width, height,
                      note=f"the image is {width}x{height} now but was labeled at "
                           f"{row.width}x{row.height}: it changed since the job, boxes not "
                           f"drawn")
    return Loaded(pixels, width, height)
