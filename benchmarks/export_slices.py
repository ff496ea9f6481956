"""`labeler export --format yolo --slice 640` on 12-megapixel photos: images and slices a
second, against the plain export (which copies each JPEG's bytes unchanged).

Writes `--images` 4000x3000 JPEGs (synthetic scenes with noise, as photos cost to decode)
and a detect job output over them through the project's own sink (`--boxes` random boxes
an image), then runs each export in this process on all cores' copy threads.

    .venv/bin/python benchmarks/export_slices.py --images 24
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.export import ExportOptions, run_export
from labeler.sinks.parquet import ShardedParquetSink
from owlv2_cpu import make_jpegs

SIZE = (4000, 3000)


def write_job(root: Path, paths: list[Path], boxes: int) -> None:
    """A detect job output over `paths`, `boxes` random boxes of 20-200 px each."""
    sink = ShardedParquetSink(root, {0: len(paths)}, ["detect"], "benchmark")
    rng = np.random.default_rng(0)
    records = []
    for path in paths:
        x0 = rng.uniform(0, SIZE[0] - 200, boxes)
        y0 = rng.uniform(0, SIZE[1] - 200, boxes)
        side = rng.uniform(20, 200, (boxes, 2))
        detections = [{"label": "car", "score": 0.5, "x0": a, "y0": b, "x1": a + w, "y1": b + h}
                      for a, b, (w, h) in zip(x0, y0, side)]
        records.append({"id": path.name, "uri": str(path), "width": SIZE[0], "height": SIZE[1],
                        "task": "detect", "task_name": "detect", "model": "m",
                        "model_family": "owlv2", "parameters": json.dumps({"labels": ["car"]}),
                        "detections": detections, "shard": 0, "part_index": 0,
                        "last_part": True})
    sink.add(pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA))
    sink.finish({"rows": len(records)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--boxes", type=int, default=30, help="boxes per image")
    parser.add_argument("--slice", type=int, default=640)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "labeler-bench"))
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    tmp = Path(args.workdir)
    paths = make_jpegs(tmp / "slices_4000", args.images, SIZE)
    job = tmp / f"slices_job_{args.images}"
    if not (job / "_SUCCESS").exists():
        write_job(job, paths, args.boxes)
    for sliced in (False, True):
        out = tmp / f"slices_out_{int(sliced)}"
        start = time.perf_counter()
        summary = run_export(ExportOptions(job=str(job), format="yolo", out=str(out),
                                           overwrite=True,
                                           slice_size=args.slice if sliced else None))
        wall = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (out / "images").rglob("*") if p.is_file())
        what = (f"--slice {args.slice}: {summary.sliced.slices} slices, "
                f"{summary.sliced.slices / wall:.1f} slices/s" if sliced else "plain copy")
        print(f"{what}: {args.images} images in {wall:.2f} s = {args.images / wall:.2f} "
              f"images/s; {summary.boxes} boxes; images written {size / 1e6:.0f} MB "
              f"({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
