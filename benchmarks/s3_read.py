"""Read + decode throughput from the local S3 server (SeaweedFS) vs from local disk.

The same N JPEGs (labeler.testing.samples.synthetic_image at 1280x720, jpeg_bytes at quality
90) are written to a local folder and uploaded to a SeaweedFS `weed mini` that this script
starts and stops (labeler.testing.s3_server, as the integration tests do). Each source is
then read the way a job reads it: `plan_source` lists it into rows, and the job's own CPU
stage, `labeler.jobs.stages.decode_batch`, reads and decodes the rows in batches of the
job's DECODE_BATCH with the default InputSpec settings. No model runs, so the figures are
what reading costs and nothing else.

`--workers` processes decode batches in parallel, as the job's decode tasks do (one per CPU);
each source is measured `--rounds` times, alternating local and S3, and the best round is
kept (the first S3 round also warms the server's caches, as a long job does).

Prints images/s for each source (listing apart, then read + decode), the S3/local time
ratio and whether it meets the target (S3 costs at most 1.5x local), with the command.

    .venv/bin/python benchmarks/s3_read.py --images 1000
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from labeler.config import InputSpec
from labeler.jobs.images import DECODE_BATCH
from labeler.jobs.stages import decode_batch
from labeler.sources import plan_source
from labeler.testing.s3_server import SeaweedS3
from labeler.testing.samples import jpeg_bytes, synthetic_image

SIZE = (1280, 720)  # 720p: a common photo/video-frame size
TARGET_RATIO = 1.5  # issue 6: reading from S3 should cost no more than 1.5x local disk
BUCKET = "bench"
MAX_PIXELS = InputSpec.model_fields["max_pixels"].default
DECODE_MIN_SIDE = InputSpec.model_fields["decode_min_side"].default


def write_images(folder: Path, count: int) -> list[Path]:
    """`count` 1280x720 JPEGs in `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        path.write_bytes(jpeg_bytes(synthetic_image(*SIZE, seed=i)))
        paths.append(path)
    return paths


def _decode_rows(rows: list[dict]) -> int:
    """decode_batch over one batch of plan rows, as a decode task gets it; good rows."""
    batch = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    out = decode_batch(batch, MAX_PIXELS, DECODE_MIN_SIDE)
    return int(sum(1 for e in out["error"] if not e))


def measure(source: str, pool: ProcessPoolExecutor | None) -> tuple[float, float, int]:
    """(listing seconds, read + decode seconds, decoded images) for one pass over `source`."""
    t0 = time.perf_counter()
    rows = [item.row(False) for item in plan_source(source, files_per_shard=256).items]
    t1 = time.perf_counter()
    batches = [rows[i:i + DECODE_BATCH] for i in range(0, len(rows), DECODE_BATCH)]
    good = sum(pool.map(_decode_rows, batches) if pool else map(_decode_rows, batches))
    return t1 - t0, time.perf_counter() - t1, good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1,
                        help="decode processes (the job runs one decode task per CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="passes per source; best kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="s3-read-") as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "images", args.images)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        server = SeaweedS3(tmp / "seaweedfs")
        server.first_start()
        try:
            os.environ.update(server.env())  # read by storage.py here and in the workers
            client = server.client()
            client.create_bucket(Bucket=BUCKET)
            for path in paths:
                client.put_object(Bucket=BUCKET, Key=f"images/{path.name}",
                                  Body=path.read_bytes())
            sources = {"local": str(tmp / "images"), "s3": f"s3://{BUCKET}/images"}
            best: dict[str, tuple[float, float]] = {}
            pool = ProcessPoolExecutor(args.workers) if args.workers > 1 else None
            try:
                for _ in range(args.rounds):
                    for name, source in sources.items():
                        listing, decode, good = measure(source, pool)
                        if good != args.images:
                            raise SystemExit(f"{name}: {good} of {args.images} decoded")
                        if name not in best or listing + decode < sum(best[name]):
                            best[name] = (listing, decode)
            finally:
                if pool:
                    pool.shutdown()
        finally:
            server.stop()

    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.images} JPEGs {SIZE[0]}x{SIZE[1]} ({mb / args.images * 1000:.0f} KB each), "
          f"decode_batch batches of {DECODE_BATCH}, {args.workers} worker(s), "
          f"best of {args.rounds} rounds, {os.cpu_count()} CPUs")
    for name, (listing, decode) in best.items():
        print(f"  {name:<5} listing {listing * 1000:7.1f} ms   read+decode "
              f"{args.images / decode:7.1f} images/s   total {args.images / (listing + decode):7.1f}"
              f" images/s")
    ratio = sum(best["s3"]) / sum(best["local"])
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"  S3 / local time: {ratio:.2f}x ({verdict} the target of <= {TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
