"""How fast `labeler select` scores a job's rows, and what its selection is worth: the mistakes
a reviewer finds per image reviewed, against a random sample of the same size.

The job output is benchmarks/fuse.py's synthetic one (2 tasks, 20 labels), with a difficulty
per image, uniform in [0, 1]: a task finds each object with probability 0.95 - 0.5 *
difficulty, scored about 0.9 - 0.6 * difficulty, and adds 4 * difficulty spurious boxes on
average, scored 0.1 to 0.3 + 0.4 * difficulty (fuse.py's write_job). Task 0's mistakes in an image,
at box score 0.3, are its boxes that match no object of their label at IoU 0.5 plus the
objects none of its boxes match (greedily, best score first). Each way of selecting picks
--share of the images.

    python benchmarks/select_review.py                      # 20,000 rows
    python benchmarks/select_review.py --rows 100000 --share 0.01
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuse import make_scenes, write_job  # noqa: E402  (the benchmark next to this one)

from labeler.selection import SelectOptions, run_select  # noqa: E402

SCORE = 0.3  # the threshold task 0's boxes are judged at
IOU = 0.5


def iou(a: tuple, b: tuple) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def mistakes(detections: list[dict], objects: list[tuple]) -> int:
    """False boxes plus missed objects of one image at SCORE (greedy matching by score)."""
    unmatched = list(objects)
    false = 0
    for d in sorted((d for d in detections if d["score"] >= SCORE), key=lambda d: -d["score"]):
        box = (d["x0"], d["y0"], d["x1"], d["y1"])
        hit = next((o for o in unmatched if o[0] == d["label"] and iou(box, o[1:]) >= IOU), None)
        if hit is None:
            false += 1
        else:
            unmatched.remove(hit)
    return false + len(unmatched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--objects", type=int, default=15)
    parser.add_argument("--share", type=float, default=0.05,
                        help="share of the images each way selects")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="select-bench-"))
    try:
        scenes = make_scenes(args.rows, args.objects)
        rng = random.Random(2)
        difficulty = [rng.random() for _ in range(args.rows)]
        write_job(work / "job", scenes, 2, 1000, difficulty)
        task0 = pads.dataset(work / "job" / "task0", format="parquet").to_table(
            columns=["id", "detections"]).to_pylist()
        errors = {r["id"]: mistakes(r["detections"], scenes[int(r["id"][3:11])]) for r in task0}
        limit = max(1, int(args.rows * args.share))
        print(f"rows: {args.rows}, 2 tasks, selecting {limit} ({args.share:.0%}); task 0's "
              f"mistakes per image at score {SCORE}: {sum(errors.values()) / args.rows:.2f} "
              f"on average")
        picks = {"random": random.Random(3).sample(sorted(errors), limit),
                 # the best any selection could do: the images with the most mistakes
                 "oracle": sorted(errors, key=lambda i: (-errors[i], i))[:limit]}
        for by, flags in (("uncertainty", {"task": "task0"}),
                          ("disagreement", {"tasks": ("task0", "task1")})):
            start = time.perf_counter()
            summary = run_select(SelectOptions((str(work / "job"),), by=by, limit=limit,
                                               **flags))
            seconds = time.perf_counter() - start
            picks[by] = [s.id for s in summary.selected]
            print(f"select --by {by}: {seconds:.2f} s, {args.rows / seconds:,.0f} rows/s")
        for by, ids in picks.items():
            found = sum(errors[i] for i in ids)
            print(f"  {by:>12}: {found / limit:.2f} mistakes per image reviewed "
                  f"({found} in {limit} images)")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MiB (including the benchmark's own copy "
              f"of task 0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
