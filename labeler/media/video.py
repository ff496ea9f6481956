"""Video files -> probed metadata and a stream of sampled RGB frames, with PyAV.

Rules: frames stream out one at a time (never all of a video's frames at once); frame times come
from the stream's own timestamps (pts * time_base, so variable frame rate is exact), counted
from the stream's start time; a frame's index is its position in presentation order among all
frames of the stream; the rotation of the container's display matrix is applied to the pixels
and to the probed size.

How sampling works: one demux-only pass over the packets (no decoding, cheap next to decoding)
lists every frame's pts and which ones are key frames. The sampling mode turns that list into
the exact set of wanted frames; decoding then walks forward, seeking to the key frame before
the next wanted frame when that skips enough frames (SEEK_MIN_SKIP_S) and the container seeks
precisely (SEEKABLE_FORMATS: MP4, Matroska, MPEG-TS), and yields the wanted frames as they
decode. AVI holds no presentation times: its frames are timed by their order out of the
decoder. Decoding uses FFmpeg's frame and slice threads (thread_type AUTO).
With min_change, a wanted frame too like the last one yielded (a static camera, a slide held
on screen) is dropped after decoding, before its conversion to RGB.

Bad input: an empty file, an unknown container or a file without a video stream raise
MediaError. A truncated or corrupt video yields the frames that did decode and then raises
VideoDecodeError (a MediaError) whose message says where decoding stopped.
"""

from __future__ import annotations

import io
import os
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Literal, NamedTuple, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from labeler.media.image import MediaError

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]
SamplingMode = Literal["all", "fps", "every_n_frames", "keyframes", "uniform"]

# Seek when the seek skips decoding more than this many seconds of frames: those between the
# last decoded frame and the key frame at or before the next wanted one. A seek costs a
# decoder flush, which throws away the frames in flight (one per frame thread, plus the few
# that B-frame reordering holds back): a handful, less than 0.5 s (15 frames at 30 fps).
# Measured (benchmarks/video_decode.py, 1080p30 H.264, a key frame every 2 s, 1 fps): 3.5
# CPU-s a minute of video against 4.9 decoding through; a threshold of 2 s, never met there,
# saved nothing.
SEEK_MIN_SKIP_S = 0.5
# Containers whose seek lands on the key frame asked for (by the pts the packet index holds);
# the others decode straight through. AVI seeks by decode time (a B-frame video lands on the
# wrong key frame and loses frames), MPEG program streams land near the file's start.
SEEKABLE_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "mpegts"})
# Containers whose seek compares the target with decode times (MPEG-TS reads the PES DTS):
# a B-frame stream's key frame is sought by its DTS; by its PTS (a few frames later) the
# seek lands on the NEXT key frame and the GOP between is lost.
SEEK_BY_DTS_FORMATS = frozenset({"mpegts"})
# Containers whose frames are timed by their order out of the decoder (_decode_wanted).
ORDER_TIMED_FORMATS = frozenset({"avi"})
# Side of the grey thumbnail that min_change compares frames by: FFmpeg's area scaling
# averages 60x34 pixel cells of a 1080p frame, which evens out sensor noise and compression
# grain while a person walking into view (a few cells) still shows. Cheap next to decoding
# (benchmarks/video_decode.py, all-min-change), and a skipped frame is never converted to RGB.
CHANGE_THUMBNAIL_SIDE = 32


class VideoDecodeError(MediaError):
    """Decoding stopped early (truncated or corrupt data); frames before it were yielded.

    stopped_at_s: the timestamp in seconds of the last frame that decoded (None if none did).
    """

    def __init__(self, message: str, stopped_at_s: float | None):
        super().__init__(message)
        self.stopped_at_s = stopped_at_s


@dataclass(frozen=True)
class VideoInfo:
    """What probe() reads from the header and the first frame.

    width, height: display size in pixels, after the rotation is applied.
    duration_s: seconds, from the stream (else the container); None if neither says.
    fps: average frame rate in frames per second; None if unknown.
    codec: the decoder's name (h264, mpeg4, vp9, ...).
    frame_count: frames declared by the header; None if the container does not say (mkv, webm).
    rotation: degrees counter-clockwise that the frames are turned for display (0, 90, 180, -90).
    """

    width: int
    height: int
    duration_s: float | None
    fps: float | None
    codec: str
    frame_count: int | None
    rotation: int


class SampledFrame(NamedTuple):
    """One sampled frame: index in presentation order, time in seconds from the stream start,
    pixels as (h, w, 3) uint8 RGB with the rotation applied."""

    index: int
    timestamp_s: float
    pixels: np.ndarray


@dataclass(frozen=True)
class Sampling:
    """Which frames to take from a video.

    mode: "all" every frame; "fps" the first frame at or after each multiple of 1/fps seconds
        from the range start; "every_n_frames" frames whose index is a multiple of n;
        "keyframes" key frames only (non-key frames are never decoded); "uniform" num_frames
        frames, the middle frame of each of num_frames equal parts of the range.
    max_frames: at most this many frames per video (the first ones of the selection).
    start_s, end_s: the time range in seconds, start inclusive, end exclusive; None = open.
    min_change: skip a selected frame that differs from the last frame yielded by less than
        this: the mean absolute difference of their grey thumbnails (CHANGE_THUMBNAIL_SIDE
        pixels square), as a fraction of full scale, 0..1. The first frame is always yielded;
        None yields every selected frame. It applies after max_frames.
    """

    mode: SamplingMode = "all"
    fps: float | None = None
    every_n_frames: int | None = None
    num_frames: int | None = None
    max_frames: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    min_change: float | None = None

    def __post_init__(self) -> None:
        needs = {"fps": "fps", "every_n_frames": "every_n_frames", "uniform": "num_frames"}
        if self.mode not in ("all", "fps", "every_n_frames", "keyframes", "uniform"):
            raise ValueError(f"unknown sampling mode {self.mode!r}")
        for mode, option in needs.items():
            value = getattr(self, option)
            if self.mode == mode and value is None:
                raise ValueError(f"sampling mode {mode!r} needs {option}")
            if self.mode != mode and value is not None:
                raise ValueError(
                    f"{option} is only used by sampling mode {mode!r}, not {self.mode!r}"
                )
        for option in ("fps", "every_n_frames", "num_frames", "max_frames"):
            value = getattr(self, option)
            if value is not None and value <= 0:
                raise ValueError(f"{option} must be > 0, got {value}")
        if self.start_s is not None and self.start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {self.start_s}")
        if self.min_change is not None and not 0 < self.min_change <= 1:
            raise ValueError(f"min_change must be in (0, 1], got {self.min_change}")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")


@dataclass(frozen=True)
class _PacketIndex:
    """The demux-only pass: pts (stream time base) of every frame in presentation order,
    the pts of key frames, and whether the data ended before the header said it would."""

    pts: list[int]
    keyframe_pts: list[int]
    truncated_reason: str | None
    keyframe_dts: dict[int, int] | None = None  # key frame pts -> its packet's dts


def _open(source: VideoSource) -> av.container.InputContainer:
    """Open a container for reading; MediaError for empty or unrecognised data."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError("empty file (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        if os.path.getsize(source) == 0:
            raise MediaError("empty file (0 bytes)")
    else:
        source.seek(0, io.SEEK_END)
        if source.tell() == 0:
            raise MediaError("empty file (0 bytes)")
        source.seek(0)
    try:
        container = av.open(source, mode="r")
    except av.error.FFmpegError as err:
        raise MediaError(f"not a recognised video container: {err}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise MediaError(f"no video stream (streams: {', '.join(kinds)})")
    return container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _seconds(pts: int, stream: av.video.stream.VideoStream) -> Fraction:
    """pts -> exact seconds from the stream's start time."""
    return (pts - (stream.start_time or 0)) * stream.time_base


def _declared_duration_s(container, stream) -> float | None:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _rotate(pixels: np.ndarray, rotation: int) -> np.ndarray:
    """Turn (h, w, 3) pixels counter-clockwise by rotation degrees (nearest multiple of 90)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, k=quarter_turns)) if quarter_turns else pixels


def probe(source: VideoSource) -> VideoInfo:
    """Read a video's metadata; decodes only the first frame, for the rotation, which PyAV
    exposes on decoded frames (the display matrix side data), not on the stream."""
    container = _open(source)
    try:
        stream = _video_stream(container)
        rotation = 0
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError:
            first = None
        if first is not None:
            rotation = int(first.rotation)
        else:
            rotation = -int(stream.metadata.get("rotate", 0))  # legacy tag, clockwise
        width, height = stream.codec_context.width, stream.codec_context.height
        if round(rotation / 90) % 2:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            width=width,
            height=height,
            duration_s=_declared_duration_s(container, stream),
            fps=float(rate) if rate else None,
            codec=stream.codec_context.name,
            frame_count=stream.frames or None,
            rotation=rotation,
        )
    finally:
        container.close()


def _index_packets(container, stream) -> _PacketIndex:
    """Demux (no decoding) every packet of the stream; list frame pts and key frames."""
    pts: list[int] = []
    keys: list[int] = []
    key_dts: dict[int, int] = {}
    error = None
    corrupt = 0
    discarded = 0
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0 or stamp is None:  # the flush packet at the end of the stream
                continue
            if packet.is_corrupt:  # cut short by the end of the file, or flagged by the demuxer
                corrupt += 1
                continue
            if packet.is_discard:
                # Before the start of an MP4 edit list (a cut made without re-encoding): the
                # decoder needs it as a reference but outputs no frame for it.
                discarded += 1
                continue
            pts.append(stamp)
            if packet.is_keyframe:
                keys.append(stamp)
                key_dts[stamp] = packet.dts if packet.dts is not None else stamp
    except av.error.FFmpegError as err:
        error = str(err)
    pts.sort()
    keys.sort()
    reason = None if error is None else f"the demuxer failed: {error}"
    if reason is None and corrupt:
        reason = f"{corrupt} packet(s) cut short or corrupt"
    if reason is None and not pts:
        reason = "the data holds no video frame"
    if reason is None and stream.frames and len(pts) + discarded < stream.frames:
        reason = f"the header declares {stream.frames} frames, the data holds {len(pts)}"
    declared = _declared_duration_s(container, stream)
    if reason is None and declared is not None and len(pts) >= 2:
        # Two frame intervals of slack: containers count the last frame's duration or not.
        step = float((pts[-1] - pts[-2]) * stream.time_base)
        end = float(_seconds(pts[-1], stream))
        # Some containers (Matroska) declare the end time, counted from 0, not the length:
        # a stream starting at 5 s is whole when its last frame is at the declared end.
        end_time = float(pts[-1] * stream.time_base)
        if max(end, end_time) + 2 * step < declared:
            reason = f"the header declares {declared:.3f} s, the data ends at {end:.3f} s"
    return _PacketIndex(pts=pts, keyframe_pts=keys, truncated_reason=reason,
                        keyframe_dts=key_dts)


def _wanted_positions(index: _PacketIndex, stream, sampling: Sampling) -> list[int]:
    """Positions (indices into index.pts, i.e. frame indices) of the frames to yield, sorted."""
    times = [_seconds(p, stream) for p in index.pts]
    lo = 0 if sampling.start_s is None else bisect_left(times, exact(sampling.start_s))
    hi = len(times) if sampling.end_s is None else bisect_left(times, exact(sampling.end_s))
    in_range = range(lo, max(lo, hi))
    if sampling.mode == "all":
        wanted = list(in_range)
    elif sampling.mode == "every_n_frames":
        wanted = [i for i in in_range if i % sampling.every_n_frames == 0]
    elif sampling.mode == "keyframes":
        keys = set(index.keyframe_pts)
        wanted = [i for i in in_range if index.pts[i] in keys]
    elif sampling.mode == "uniform":
        count, parts = len(in_range), sampling.num_frames
        if parts >= count:
            picks = range(count)
        else:
            picks = ((2 * k + 1) * count // (2 * parts) for k in range(parts))
        wanted = [lo + k for k in picks]
    else:  # fps
        step = 1 / exact(sampling.fps)
        if sampling.start_s is not None:
            origin = exact(sampling.start_s)
        else:
            origin = times[lo] if in_range else Fraction(0)
        # A frame within half a tick of the stream's time base of a target is at it: muxers
        # round times to their tick (Matroska: 1 ms, so 30 fps frames sit at 33, 67, 100 ms,
        # and the frame at 33 ms is the one meant for 1/30 s).
        slack = Fraction(stream.time_base) / 2
        wanted, k = [], 0
        while in_range:
            pos = bisect_left(times, origin + k * step - slack, lo, in_range.stop)
            if pos >= in_range.stop:
                break
            if not wanted or wanted[-1] != pos:  # several targets in one long VFR frame
                wanted.append(pos)
            k += 1
    if sampling.max_frames is not None:
        wanted = wanted[: sampling.max_frames]
    return wanted


def exact(value: float) -> Fraction:
    """A user-given number of seconds or frames per second as the fraction it was meant to be
    (0.1 -> 1/10, not the binary float just above it); a microsecond-level rounding at most."""
    return Fraction(value).limit_denominator(10**6)


def _keyframe_at_or_before(index: _PacketIndex, pts: int) -> int | None:
    pos = bisect_left(index.keyframe_pts, pts + 1) - 1
    return index.keyframe_pts[pos] if pos >= 0 else None


def sample_frames(
    source: VideoSource, mode: SamplingMode = "all", **options
) -> Iterator[SampledFrame]:
    """Yield the sampled frames of a video, in time order; options are Sampling's fields.

    Raises MediaError before yielding for unreadable input, and VideoDecodeError after the
    frames that did decode when the data is truncated or corrupt.
    """
    return sample_video(source, Sampling(mode=mode, **options))


@dataclass
class SamplingCounts:
    """What sampling selected and left out, counted as it goes: `selected`, the frames the
    sampling mode selects (max_frames applied, min_change not), known once the packets are
    indexed, before the first frame decodes (None until then); `unchanged`, the selected
    frames that min_change skipped."""

    selected: int | None = None
    unchanged: int = 0


def sample_video(
    source: VideoSource, sampling: Sampling, seek_min_skip_s: float = SEEK_MIN_SKIP_S,
    counts: SamplingCounts | None = None,
) -> Iterator[SampledFrame]:
    """sample_frames with a ready Sampling; seek_min_skip_s: see SEEK_MIN_SKIP_S (inf never
    seeks); counts, when given, gets what sampling left out."""
    container = _open(source)
    try:
        index = _index_packets(container, _video_stream(container))
    finally:
        container.close()
    container = _open(source)
    try:
        yield from _decode_wanted(container, index, sampling, seek_min_skip_s,
                                  counts if counts is not None else SamplingCounts())
    finally:
        container.close()


def _seek_target(index: _PacketIndex, cursor: int | None, target: int, min_skip: float,
                 sought: int | None) -> int | None:
    """The key frame to seek to before decoding the next wanted frame (pts target), or None
    to decode on. Seek when the key frame at or before it lies more than min_skip (pts units)
    past the decoder's position: decoding would go through those frames for nothing, while
    after the seek it starts at that key frame. cursor: pts of the last decoded frame, None
    before the first. sought: the last key frame sought; never seek to it or one before it
    again (a seek that lands short of its key frame would otherwise be asked for ever)."""
    here = index.pts[0] if cursor is None else cursor
    key = _keyframe_at_or_before(index, target)
    if key is None or key - here <= min_skip or (sought is not None and key <= sought):
        return None
    return key


def _decoded_frames(container, stream, damage: list | None = None) -> Iterator[av.VideoFrame]:
    """Decode forward from the demuxer's position. On bad data, first drain the frames the
    decoder still holds (B-frame reordering keeps a few back), then raise _BadData.

    damage: when given, a packet the decoder refuses (InvalidDataError: one damaged packet
    in the middle of the file) does not end decoding: the frames the decoder holds are
    drained, (pts of the last frame before it, FFmpeg's message) is appended to `damage`,
    and decoding resumes at the next key frame, so that the frames between are never given
    concealed pixels; they are counted lost by the caller."""
    error = None
    skipping = False
    last = None
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                continue  # fed to the decoder, it can make it drop the frames it holds back
            if skipping:
                if not packet.is_keyframe:
                    continue
                skipping = False
            try:
                frames = stream.decode(packet)  # the empty packet at the end flushes
            except av.error.InvalidDataError as err:
                if damage is None or packet.size == 0:
                    error = err
                    break
                try:
                    for frame in stream.decode(None):
                        last = frame.pts if frame.pts is not None else last
                        yield frame
                except av.error.FFmpegError:
                    pass
                stream.codec_context.flush_buffers()  # out of draining, for the key frame
                damage.append((last, str(err)))
                skipping = True
                continue
            except av.error.FFmpegError as err:
                error = err
                break
            for frame in frames:
                last = frame.pts if frame.pts is not None else last
                yield frame
    except av.error.FFmpegError as err:  # the demuxer's own read errors
        error = err
    if error is not None:
        try:
            yield from stream.decode(None)
        except av.error.FFmpegError:
            pass  # nothing more can be drained; the first error is the one to report
        raise _BadData(str(error))


class _BadData(Exception):
    """Internal: decoding hit data it could not read; the message is FFmpeg's."""


class _ChangeFilter:
    """Sampling.min_change: keep(frame) says whether a decoded frame differs enough from the
    last kept one; always True when min_change is None."""

    def __init__(self, min_change: float | None):
        self.min_change = min_change
        self.last: np.ndarray | None = None  # grey thumbnail of the last kept frame, 0..1
        # One scaler for the video: frame.reformat() would set up a new one for every frame,
        # 0.9 ms at 1080p against 0.16 ms for the scaling itself.
        self.scaler = VideoReformatter() if min_change is not None else None

    def keep(self, frame: av.VideoFrame) -> bool:
        if self.min_change is None:
            return True
        # swscale maps limited-range luma to full-range grey, so 0 is black and 255 white.
        grey = self.scaler.reformat(frame, width=CHANGE_THUMBNAIL_SIDE,
                                    height=CHANGE_THUMBNAIL_SIDE, format="gray",
                                    interpolation="AREA").to_ndarray()
        thumbnail = grey.astype(np.float32) / 255.0
        if self.last is not None and np.abs(thumbnail - self.last).mean() < self.min_change:
            return False
        self.last = thumbnail
        return True


def _decode_wanted(container, index: _PacketIndex, sampling: Sampling, seek_min_skip_s: float,
                   counts: SamplingCounts):
    stream = _video_stream(container)
    if sampling.mode == "keyframes":
        stream.codec_context.skip_frame = "NONKEY"
    wanted = _wanted_positions(index, stream, sampling)
    counts.selected = len(wanted)
    changes = _ChangeFilter(sampling.min_change)
    formats = set(container.format.name.split(","))
    if not SEEKABLE_FORMATS & formats:
        seek_min_skip_s = float("inf")
    by_dts = bool(formats & SEEK_BY_DTS_FORMATS) and index.keyframe_dts is not None
    # AVI stores no presentation times: a frame's pts is its packet's, in decode order, so
    # B-frames come out with another frame's pts. Frames come out in presentation order,
    # and the sorted packet times are the presentation times (AVI's rate is constant).
    by_order = bool(formats & ORDER_TIMED_FORMATS)
    # With skip_frame NONKEY only key frames come out: the k-th is the k-th key frame.
    order_pts = index.keyframe_pts if sampling.mode == "keyframes" else index.pts
    decoded = 0  # frames out of the decoder, for by_order
    min_skip = seek_min_skip_s / float(stream.time_base)  # in pts units; inf never seeks
    sought: int | None = None  # the last key frame sought: never again, nor one before it
    done = 0  # wanted[:done] are yielded or known lost
    lost = 0  # wanted frames the decoder never produced
    cursor: int | None = None  # pts of the last decoded frame
    problem = None
    damage: list[tuple[int | None, str]] = []  # packets the decoder refused (skipped past)
    try:
        while done < len(wanted):
            key = _seek_target(index, cursor, index.pts[wanted[done]], min_skip, sought)
            if key is not None:
                container.seek(index.keyframe_dts.get(key, key) if by_dts else key,
                               backward=True, any_frame=False, stream=stream)
                sought = key
            # Order-timed frames cannot skip: the k-th frame out must be the k-th in time.
            for frame in _decoded_frames(container, stream, None if by_order else damage):
                if by_order:  # the k-th frame out is the k-th in time (never seeks)
                    if decoded >= len(order_pts):
                        break
                    cursor, decoded = order_pts[decoded], decoded + 1
                elif frame.pts is None:
                    continue
                else:
                    cursor = frame.pts
                while done < len(wanted) and index.pts[wanted[done]] < cursor:
                    done, lost = done + 1, lost + 1  # the decoder dropped it (corrupt data)
                if done < len(wanted) and index.pts[wanted[done]] == cursor:
                    if changes.keep(frame):
                        rgb = _rotate(frame.to_ndarray(format="rgb24"), frame.rotation)
                        yield SampledFrame(wanted[done], float(_seconds(cursor, stream)), rgb)
                    else:
                        counts.unchanged += 1
                    done += 1
                if done >= len(wanted):
                    break
                if _seek_target(index, cursor, index.pts[wanted[done]], min_skip,
                                sought) is not None:
                    break
            else:  # the data ended with wanted frames left
                lost, done = lost + len(wanted) - done, len(wanted)
    except _BadData as err:
        problem = str(err)
    data_end = float(_seconds(index.pts[-1], stream)) if index.pts else 0.0
    reached_cap = sampling.max_frames is not None and done >= sampling.max_frames
    range_past_end = sampling.end_s is None or sampling.end_s > data_end
    if problem is None and damage:
        first, message = damage[0]
        where = ("before the first frame" if first is None
                 else f"after the frame at {float(_seconds(first, stream)):.3f} s")
        raise VideoDecodeError(
            f"corrupt video: {len(damage)} damaged packet(s), the first {where} ({message}); "
            f"decoding resumed at the next key frame; {lost} sampled frame(s) did not decode",
            None if first is None else float(_seconds(first, stream)))
    if problem is None and lost:
        problem = f"{lost} sampled frame(s) did not decode"
    if problem is None and index.truncated_reason and range_past_end and not reached_cap:
        problem = index.truncated_reason
        # Sampling may not have needed the last frames before the damage: the stop is the
        # last frame the data holds whole, decoded or not.
        cursor = index.pts[-1] if index.pts else None
    if problem is not None:
        stopped = None if cursor is None else float(_seconds(cursor, stream))
        if stopped is None:
            where = "before the first frame"
        else:
            where = f"after the frame at {stopped:.3f} s"
        message = f"truncated or corrupt video: decoding stopped {where}; {problem}"
        raise VideoDecodeError(message, stopped)
