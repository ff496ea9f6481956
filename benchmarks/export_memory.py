"""`labeler export --format coco` on a large job output: wall time and peak memory, to show
that the export streams (memory does not grow with the rows).

Writes a synthetic job output through the project's own sink (ShardedParquetSink, 1,000
rows per shard, `--boxes` boxes per row, 20 labels), then runs the export in a fresh
process per size, which prints its own peak RSS (VmHWM; imports included). No image is
read (COCO without --copy-images).

    .venv/bin/python benchmarks/export_memory.py --rows 20000 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.sinks.parquet import ShardedParquetSink

ROWS_PER_SHARD = 1000
LABELS = [f"class {k}" for k in range(20)]


def write_job(root: Path, rows: int, boxes: int) -> None:
    """A detect job output of `rows` 1280x720 images with `boxes` random boxes each."""
    shards = -(-rows // ROWS_PER_SHARD)
    expected = {s: min(ROWS_PER_SHARD, rows - s * ROWS_PER_SHARD) for s in range(shards)}
    sink = ShardedParquetSink(root, expected, ["detect"], "benchmark")
    rng = np.random.default_rng(0)
    parameters = json.dumps({"labels": LABELS, "threshold": 0.1})
    for shard, count in expected.items():
        records = []
        for i in range(count):
            x0, y0 = rng.uniform(0, 640, boxes), rng.uniform(0, 360, boxes)
            detections = [{"label": LABELS[int(k)], "score": float(s), "x0": float(a),
                           "y0": float(b), "x1": float(a + 100), "y1": float(b + 80)}
                          for k, s, a, b in zip(rng.integers(0, 20, boxes),
                                                rng.uniform(0.1, 1, boxes), x0, y0)]
            index = shard * ROWS_PER_SHARD + i
            records.append({"id": f"img/{index:08d}.jpg", "uri": f"/data/img/{index:08d}.jpg",
                            "width": 1280, "height": 720, "task": "detect", "task_name": "detect",
                            "model": "m", "model_family": "owlv2", "parameters": parameters,
                            "detections": detections, "shard": shard, "part_index": 0,
                            "last_part": True})
        sink.add(pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA))
    sink.finish({"rows": rows})


# The child runs the CLI, then prints its own peak RSS (KB, Linux) on the last line: VmHWM,
# the high-water mark of its own memory. Not getrusage's ru_maxrss, which Linux carries
# across fork and exec: the child would report this process's RSS when it was started.
_CHILD = ("import sys\nfrom labeler.cli import main\ncode = main(sys.argv[1:])\n"
          "print(next(line.split()[1] for line in open('/proc/self/status')\n"
          "           if line.startswith('VmHWM:')))\nsys.exit(code)")


def export_peak(job: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of `labeler export` in a fresh process of its own."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, "export", str(job), "--format", "coco",
                           "--out", str(out)], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, int(done.stdout.splitlines()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--boxes", type=int, default=10, help="boxes per row")
    args = parser.parse_args()
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="export-memory-") as tmp:
        for rows in args.rows:
            job = Path(tmp) / f"job-{rows}"
            write_job(job, rows, args.boxes)
            wall, peak = export_peak(job, Path(tmp) / f"coco-{rows}")
            size = os.path.getsize(Path(tmp) / f"coco-{rows}" / "annotations.json") / 1e6
            print(f"  {rows:>8} rows, {rows * args.boxes:>9} boxes: export {wall:6.1f} s, "
                  f"peak RSS {peak:6.0f} MB, annotations.json {size:7.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
