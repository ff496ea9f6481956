"""The Parquet sink alone: what the driver spends per output row to route, buffer and commit
records (labeler.sinks.parquet.ShardedParquetSink.add), whatever the cluster's size.

N OWLv2-like records (10 detections each, or error rows with --errors) are made into
record tables of `--batch` rows, as the model actors return them, before timing; then the
tables are added to a sink writing shards of `--per-shard` inputs to a temporary folder.
Best of `--rounds`.

    .venv/bin/python benchmarks/sink_throughput.py --rows 20000 --batch 8 16 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.sinks.parquet import ShardedParquetSink


def records(n: int, per_shard: int, detections: int, errors: bool) -> list[dict]:
    params = json.dumps({"labels": ["cat", "dog"], "threshold": 0.1, "nms": 0.3})
    out = []
    for i in range(n):
        row = {"id": f"dir/img_{i:07d}.jpg", "uri": f"/data/images/dir/img_{i:07d}.jpg",
               "width": 1280, "height": 720, "task": "detect", "task_name": "detect",
               "model": "google/owlv2-base-patch16-ensemble", "model_family": "owlv2",
               "model_revision": "abc", "parameters": params,
               "timings": {"decode_ms": 3.0, "preprocess_ms": 1.0, "predict_ms": 2.0,
                           "postprocess_ms": 0.5},
               "shard": i // per_shard, "part_index": 0, "last_part": True,
               "unchanged_frames": 0}
        if errors:
            row["error"] = f"corrupt image data: truncated ({i} bytes)"
        else:
            row["detections"] = [{"label": "cat", "score": 0.5 + k / 100, "x0": 1.0 * k,
                                  "y0": 2.0, "x1": 10.0 + k, "y1": 20.0}
                                 for k in range(detections)]
        out.append(row)
    return out


def one_round(tables: list[pa.Table], expected: dict[int, int]) -> float:
    with tempfile.TemporaryDirectory(prefix="sink-") as tmp:
        sink = ShardedParquetSink(Path(tmp) / "out", expected, ["detect"], "fp")
        start = time.perf_counter()
        for table in tables:
            sink.add(table)
        seconds = time.perf_counter() - start
        if sink.pending_shards():
            raise SystemExit("shards left uncommitted")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--detections", type=int, default=10)
    parser.add_argument("--errors", action="store_true", help="error rows, no detections")
    parser.add_argument("--shuffle", action="store_true", help="batches out of order")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = records(args.rows, args.per_shard, args.detections, args.errors)
    expected: dict[int, int] = {}
    for row in rows:
        expected[row["shard"]] = expected.get(row["shard"], 0) + 1
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{args.rows} records ({'errors' if args.errors else f'{args.detections} detections'}),"
          f" {len(expected)} shards of {args.per_shard}, {os.cpu_count()} CPUs, "
          f"best of {args.rounds}")
    for batch in args.batch:
        tables = [pa.Table.from_pylist(rows[i:i + batch], schema=OUTPUT_SCHEMA)
                  for i in range(0, args.rows, batch)]
        if args.shuffle:
            random.Random(0).shuffle(tables)
        best = min(one_round(tables, expected) for _ in range(args.rounds))
        print(f"  batch {batch:4d}: {args.rows / best:8.0f} rows/s, "
              f"{best / args.rows * 1e6:5.1f} us/row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
