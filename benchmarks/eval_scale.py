"""`labeler eval` of a large job output against a COCO-val-sized ground truth: wall time and
peak memory, to show that evaluation costs what the ground truth costs, not the job.

Writes a synthetic detect job output (benchmarks/export_memory.py's: 1280x720 rows, `--boxes`
random boxes each, 20 labels), and a ground truth over its first `--images` rows: each row's
boxes scoring over 0.5, moved by up to 8 px (so AP is neither 0 nor 1), under file names
that are the row ids. Then runs `labeler eval` in a fresh process per job size, which prints
its own peak RSS (VmHWM; imports included).

    .venv/bin/python benchmarks/eval_scale.py --rows 20000 200000 --images 5000
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

sys.path.insert(0, str(Path(__file__).parent))
# _CHILD: runs the CLI in a fresh process and prints its peak RSS (KB) on the last line.
from export_memory import _CHILD, LABELS, write_job  # noqa: E402
JITTER_PX = 8.0  # how far a ground-truth corner sits from the predicted one, at most
TRUE_ABOVE = 0.5  # predicted boxes scoring over this become ground truth


def write_ground_truth(job: Path, images: int, path: Path) -> int:
    """COCO file over the first `images` rows of `job` -> its number of boxes."""
    rows = (pads.dataset(job / "detect", format="parquet")
            .head(images, columns=["id", "width", "height", "detections"]).to_pylist())
    rng = np.random.default_rng(1)
    entries, annotations = [], []
    for image_id, row in enumerate(rows, start=1):
        entries.append({"id": image_id, "file_name": row["id"], "width": row["width"],
                        "height": row["height"]})
        for d in row["detections"]:
            if d["score"] <= TRUE_ABOVE:
                continue
            x0, y0, x1, y1 = np.array([d["x0"], d["y0"], d["x1"], d["y1"]]) \
                + rng.uniform(-JITTER_PX, JITTER_PX, 4)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": LABELS.index(d["label"]) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(LABELS)]
    path.write_text(json.dumps({"images": entries, "categories": categories,
                                "annotations": annotations}))
    return len(annotations)


def eval_peak(job: Path, truth: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, the mean line) of `labeler eval` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, "eval", str(job), "--coco", str(truth)],
                          check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = done.stdout.splitlines()
    mean = next(line.strip() for line in lines if line.strip().startswith("mean over"))
    return wall, int(lines[-1]) / 1024, mean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--boxes", type=int, default=10, help="boxes per row")
    parser.add_argument("--images", type=int, default=5000, help="ground-truth images")
    args = parser.parse_args()
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="eval-scale-") as tmp:
        for rows in args.rows:
            job = Path(tmp) / f"job-{rows}"
            write_job(job, rows, args.boxes)
            truth = Path(tmp) / f"truth-{rows}.json"
            boxes = write_ground_truth(job, args.images, truth)
            wall, peak, mean = eval_peak(job, truth)
            print(f"  job {rows:>8} rows ({rows * args.boxes} boxes), ground truth "
                  f"{min(rows, args.images)} images ({boxes} boxes): eval {wall:6.1f} s, peak "
                  f"RSS {peak:6.0f} MB; {mean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
