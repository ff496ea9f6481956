"""How fast `labeler fuse` fuses a job's tasks: rows/s and boxes/s end to end (read the
tasks' Parquet, check that they pair, fuse, write), on a synthetic job output.

The job output has --tasks detect tasks over --rows images in part files of --per-part rows;
each image shows --objects objects of 20 labels, and each task finds each object with
probability 0.8 (a box jittered by 5% of its size, scored 0.1-1 at random), plus 2 spurious
boxes (scored 0.1-0.4): about 0.8 * objects + 2 boxes per task and image, as a detect task
at threshold 0.1 gives. It then prints the COCO AP of each task and of the fused one against
the objects (`labeler eval`): what agreement between tasks is worth under this noise.

    python benchmarks/fuse.py                       # 20,000 rows, 2 tasks, 15 objects
    python benchmarks/fuse.py --rows 100000 --tasks 3 --objects 30 --workers 1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.evaluate.run import EvalOptions, run_eval
from labeler.fusion import FuseOptions, run_fuse
from labeler.schemas.record import RECORD_SCHEMA

LABELS = [f"label{k}" for k in range(20)]
WIDTH, HEIGHT = 1280, 720


def make_scenes(rows: int, objects: int) -> list[list[tuple]]:
    """Each image's objects: (label, x0, y0, x1, y1) in pixels."""
    rng = random.Random(1)
    scenes = []
    for _ in range(rows):
        scene = []
        for _ in range(objects):
            x0, y0 = rng.uniform(0, WIDTH * 0.9), rng.uniform(0, HEIGHT * 0.9)
            scene.append((rng.choice(LABELS), x0, y0, x0 + rng.uniform(10, 200),
                          y0 + rng.uniform(10, 200)))
        scenes.append(scene)
    return scenes


def write_ground_truth(path: Path, scenes: list[list[tuple]]) -> None:
    """The scenes' objects as a COCO file (what `labeler eval --coco` reads)."""
    images, annotations = [], []
    for i, scene in enumerate(scenes):
        images.append({"id": i + 1, "file_name": f"img{i:08d}.jpg", "width": WIDTH,
                       "height": HEIGHT})
        for label, x0, y0, x1, y1 in scene:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": LABELS.index(label) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    categories = [{"id": k + 1, "name": label} for k, label in enumerate(LABELS)]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))


def write_job(root: Path, scenes: list[list[tuple]], tasks: int, per_part: int,
              difficulty: list[float] | None = None) -> int:
    """The synthetic job output under root; the number of boxes written. difficulty: per
    image, in [0, 1]: a task finds each object with probability 0.95 - 0.5 * difficulty,
    scored about 0.9 - 0.6 * difficulty (sd 0.15), and adds 4 * difficulty spurious boxes
    on average, scored 0.1 to 0.3 + 0.4 * difficulty: a detector is less sure where it errs
    more. None: 0.8, scored 0.1-1 at random, and 2 spurious boxes in every image."""
    rng = random.Random(0)
    rows = len(scenes)
    boxes = 0
    for t in range(tasks):
        folder = root / f"task{t}"
        folder.mkdir(parents=True)
        parameters = json.dumps({"labels": LABELS, "threshold": 0.1})
        for part, start in enumerate(range(0, rows, per_part)):
            records = []
            for i in range(start, min(start + per_part, rows)):
                detections = []
                found, spurious, false_top = 0.8, 2, 0.4
                if difficulty is not None:
                    d = difficulty[i]
                    found, false_top = 0.95 - 0.5 * d, 0.3 + 0.4 * d
                    spurious = sum(rng.random() < d for _ in range(4))
                for label, x0, y0, x1, y1 in scenes[i]:
                    if rng.random() < found:
                        j = [rng.gauss(0, 0.05 * (x1 - x0)) for _ in range(4)]
                        score = (rng.uniform(0.1, 1.0) if difficulty is None else
                                 min(max(rng.gauss(0.9 - 0.6 * difficulty[i], 0.15), 0.1), 1.0))
                        detections.append({"label": label, "score": score,
                                           "x0": x0 + j[0], "y0": y0 + j[1],
                                           "x1": x1 + j[2], "y1": y1 + j[3]})
                for _ in range(spurious):
                    x0, y0 = rng.uniform(0, WIDTH - 50), rng.uniform(0, HEIGHT - 50)
                    detections.append({"label": rng.choice(LABELS),
                                       "score": rng.uniform(0.1, false_top), "x0": x0, "y0": y0,
                                       "x1": x0 + 40, "y1": y0 + 40})
                boxes += len(detections)
                records.append({"id": f"img{i:08d}.jpg", "uri": f"/data/img{i:08d}.jpg",
                                "width": WIDTH, "height": HEIGHT, "task": "detect",
                                "task_name": f"task{t}", "model": "m", "model_family": "owlv2",
                                "parameters": parameters, "detections": detections})
            pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA),
                           folder / f"part-{part:05d}.parquet", compression="zstd")
    (root / "_SUCCESS").write_text("{}")
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--objects", type=int, default=15)
    parser.add_argument("--per-part", type=int, default=1000)
    parser.add_argument("--eval-images", type=int, default=2000,
                        help="COCO AP of each task and of the fused one against the synthetic "
                             "objects of the first this many images (0: none)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes fusing part files (default: one per CPU)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fuse-bench-"))
    try:
        scenes = make_scenes(args.rows, args.objects)
        boxes = write_job(work / "job", scenes, args.tasks, args.per_part)
        names = [f"task{t}" for t in range(args.tasks)]
        start = time.perf_counter()
        summary = run_fuse(FuseOptions((str(work / "job"),), str(work / "fused"),
                                       {"tasks": names}, workers=args.workers))
        seconds = time.perf_counter() - start
        print(f"rows: {args.rows}, tasks: {args.tasks}, workers: "
              f"{args.workers or 'one per CPU'}, boxes in: {boxes} "
              f"({boxes / args.rows / args.tasks:.1f} per task and image), "
              f"out: {summary.count.boxes_out}")
        print(f"fuse: {seconds:.2f} s, {args.rows / seconds:,.0f} rows/s, "
              f"{boxes / seconds:,.0f} boxes in/s")
        if args.eval_images:
            truth = work / "truth.json"
            write_ground_truth(truth, scenes[:args.eval_images])
            for output, task in [*((work / "job", name) for name in names),
                                 (work / "fused", "fused")]:
                mean = run_eval(EvalOptions(str(output), coco=str(truth), task=task,
                                            worst=0)).figures["mean"]
                print(f"eval on {min(args.eval_images, args.rows)} images: {task}: "
                      f"AP {mean['ap']:.3f}, AP50 {mean['ap50']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
