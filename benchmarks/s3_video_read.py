"""Reading a video from S3 (local SeaweedFS): bytes fetched, requests and wall time, for the
two ways the video decode stage reads an S3 object.

    by-range  labeler.storage.open_input(uri): ranged GETs of OPEN_INPUT_BUFFER (2 MiB) as
              PyAV asks; sampling reads the video twice (the demux-only index pass, then
              decoding), so about twice its bytes
    whole     open_input(uri, whole_up_to=VIDEO_READ_WHOLE_BYTES): one GET of the whole
              object, decoded from memory (the job's default for videos up to that size)

Both run the job's own `labeler.jobs.video.video_rows` over a 1080p30 H.264 test video
(benchmarks/video_decode.py's `encode`, preset veryfast, a key frame every 2 s) at 1 frame
a second, and must give the same frames. Bytes and requests are counted at the pyarrow file
the reader gets (a counting wrapper around `open_input_file`: instrumentation of this
script, not of the job). Wall time is the best of `--rounds`; the server runs on this
machine, so it shows the request overhead, not a network's bandwidth.

    .venv/bin/python benchmarks/s3_video_read.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from labeler import storage
from labeler.jobs import video as video_stage
from labeler.jobs.stages import TaskTransforms
from labeler.media.video import Sampling
from labeler.testing.s3_server import SeaweedS3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_decode import encode  # noqa: E402

BUCKET = "bench"
MAX_PIXELS = 10**8


class _CountingFile:
    """A pyarrow random-access file that counts read_at calls (one GET each) and bytes."""

    def __init__(self, native, counts: dict):
        self._native, self._counts = native, counts

    def size(self) -> int:
        return self._native.size()

    def read_at(self, nbytes: int, offset: int) -> bytes:
        data = self._native.read_at(nbytes, offset)
        self._counts["requests"] += 1
        self._counts["bytes"] += len(data)
        return data

    def close(self) -> None:
        self._native.close()


class _CountingFileSystem:
    def __init__(self, fs, counts: dict):
        self._fs, self._counts = fs, counts

    def open_input_file(self, path: str) -> _CountingFile:
        return _CountingFile(self._fs.open_input_file(path), self._counts)


def read_video(uri: str, whole_up_to: int) -> tuple[list, dict, float]:
    """(frames as (index, timestamp, pixel bytes), {requests, bytes}, seconds) of one read."""
    counts = {"requests": 0, "bytes": 0}
    original = storage.filesystem_for

    def counting(u):
        fs, path = original(u)
        return _CountingFileSystem(fs, counts), path

    storage.filesystem_for = counting
    saved = video_stage.VIDEO_READ_WHOLE_BYTES
    video_stage.VIDEO_READ_WHOLE_BYTES = whole_up_to
    try:
        start = time.perf_counter()
        rows = list(video_stage.video_rows(uri, Sampling("fps", fps=1), None, MAX_PIXELS,
                                           TaskTransforms()))
        seconds = time.perf_counter() - start
    finally:
        storage.filesystem_for = original
        video_stage.VIDEO_READ_WHOLE_BYTES = saved
    if any(r.error for r in rows):
        raise SystemExit(f"decoding failed: {rows[-1].error}")
    frames = [(r.frame_index, r.timestamp_s, r.images["image"].tobytes()) for r in rows]
    return frames, counts, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the video")
    parser.add_argument("--rounds", type=int, default=3, help="reads per mode; best kept")
    args = parser.parse_args()

    modes = {"by-range": 0, "whole": video_stage.VIDEO_READ_WHOLE_BYTES}
    with tempfile.TemporaryDirectory(prefix="s3-video-") as tmp:
        tmp = Path(tmp)
        path = tmp / "video.mp4"
        encode(path, args.seconds, "veryfast")
        size = path.stat().st_size
        server = SeaweedS3(tmp / "seaweedfs")
        server.first_start()
        try:
            os.environ.update(server.env())  # read by labeler.storage
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key="video.mp4", Body=path.read_bytes())
            uri = f"s3://{BUCKET}/video.mp4"
            results, reference = {}, None
            for _ in range(args.rounds):
                for name, whole_up_to in modes.items():
                    frames, counts, seconds = read_video(uri, whole_up_to)
                    reference = reference or frames
                    if frames != reference:
                        raise SystemExit(f"{name}: frames differ from the other mode's")
                    if name not in results or seconds < results[name][1]:
                        results[name] = (counts, seconds)
        finally:
            server.stop()

    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"video: 1080p30 H.264, {args.seconds:g} s, {size / 1e6:.1f} MB; sampled at 1 fps: "
          f"{len(reference)} frames; best of {args.rounds}; {os.cpu_count()} CPUs")
    for name, (counts, seconds) in results.items():
        print(f"  {name:<8} fetched {counts['bytes'] / 1e6:7.1f} MB = "
              f"{counts['bytes'] / size:.2f}x the file in {counts['requests']:4d} requests, "
              f"wall {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
