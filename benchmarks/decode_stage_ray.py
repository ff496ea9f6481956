"""The decode stage alone, through Ray Data and in a plain loop: what Ray Data's per-task
overhead costs the CPU side of a job, for different numbers of inputs per decode task.

Inputs: `--images` 640x480 JPEGs (COCO's typical size, photo-like noise), for an OWLv2
detect task (tiny model at the real 960 input, so the CPU transform costs what it costs for
the real model). What the stage makes of an image depends on `--preprocess` and
`--num-gpus`: fast, the padded 960x960 uint8 canvas; processor on a CPU actor, the
processor's float32 pixel values; processor on a GPU actor, the decoded image as it is (the
processor runs on the device).

    loop   labeler.jobs.stages.decode_batch over blocks of 16 rows in this process: the work
           itself, on one core
    ray    labeler.jobs.images.decoded_images (the job's decode dataset: from_items, one
           map_batches task per block of `rows_per_block` inputs, 1 CPU each) on a local Ray
           of `--cpus` CPUs, consumed by the driver with iter_batches (pixels dropped), for
           each of `--blocks` rows per block. Ray start and the first block apart.

Printed: rows/s, and for Ray rows/s per CPU against the loop's (1.0: no overhead; the driver
consuming the rows shares the CPUs, as a job's driver does).

    .venv/bin/python benchmarks/decode_stage_ray.py --images 2000 --blocks 16 64 --cpus 1 \
        --preprocess processor --num-gpus 1
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

sys.path.insert(0, str(Path(__file__).parent))
from owlv2_cpu import make_jpegs  # noqa: E402

from labeler.config import load_job_spec  # noqa: E402
from labeler.jobs.stages import decode_batch  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402

IMAGE_SIZE = (640, 480)
LOOP_BLOCK = 16


def job_spec(folder: Path, model: Path, out: Path, preprocess: str = "fast", num_gpus: float = 0):
    return load_job_spec(None, input=str(folder), output=str(out), task="detect",
                         family="owlv2", model=str(model), labels=["cat"], preprocess=preprocess,
                         num_gpus=num_gpus)


def loop_rate(spec, todo: list[dict]) -> float:
    """rows/s of decode_batch in this process, one block of LOOP_BLOCK rows at a time."""
    task = spec.tasks[0]
    kwargs = {"max_pixels": spec.input.max_pixels, "decode_min_side": spec.input.decode_min_side,
              "tasks": [task]}
    first = todo[:LOOP_BLOCK]
    decode_batch({k: [r[k] for r in first] for k in first[0]}, **kwargs)  # warm: processor
    start = time.perf_counter()
    for k in range(0, len(todo), LOOP_BLOCK):
        block = todo[k:k + LOOP_BLOCK]
        decode_batch({key: [r[key] for r in block] for key in block[0]}, **kwargs)
    return len(todo) / (time.perf_counter() - start)


def shipped(spec, todo: list[dict]) -> str:
    """What one decoded row carries to the model actor: its image column's shape, dtype, MB."""
    from labeler.jobs.stages import input_column

    row = todo[:1]
    out = decode_batch({k: [r[k] for r in row] for k in row[0]}, spec.input.max_pixels,
                       spec.input.decode_min_side, [spec.tasks[0]])
    pixels = out[input_column(spec.tasks[0])][0]
    return f"{pixels.dtype} {tuple(pixels.shape)}, {pixels.nbytes / 1e6:.2f} MB"


def ray_rate(spec, todo: list[dict], rows_per_block: int) -> tuple[float, float]:
    """(rows/s after the first block, seconds to the first block) through decoded_images."""
    from labeler.jobs.images import decoded_images

    ds = decoded_images(spec, todo, rows_per_block=rows_per_block)
    start = time.perf_counter()
    first_at, rows_after_first = None, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if first_at is None:
            first_at = time.perf_counter()
            continue
        rows_after_first += len(batch["id"])
    return rows_after_first / (time.perf_counter() - first_at), first_at - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 64],
                        help="inputs per decode task (the job's default: 16)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--preprocess", choices=["fast", "processor"], default="fast")
    parser.add_argument("--num-gpus", type=float, default=0,
                        help="the task's GPUs: 1 makes the decode stage of a GPU job (no GPU "
                             "is used: only the model actor would take one)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "labeler-bench"))
    args = parser.parse_args()
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    work = Path(args.workdir)
    folder = work / f"decode_{IMAGE_SIZE[0]}"
    make_jpegs(folder, args.images, IMAGE_SIZE)
    model = work / "owlv2-960"
    if not (model / "config.json").exists():
        build_tiny_model("owlv2", model, image_size=960)
    spec = job_spec(folder, model, work / "unused-output", args.preprocess, args.num_gpus)
    todo = [{"id": p.name, "uri": str(p), "shard": 0} for p in sorted(folder.glob("*.jpg"))]
    todo = todo[:args.images]

    loop = loop_rate(spec, todo)
    print(f"loop: {loop:7.1f} rows/s on one core ({1000 / loop:.2f} ms a row); the stage "
          f"ships {shipped(spec, todo)} a row")
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for rows_per_block in args.blocks:
            rate, first = ray_rate(spec, todo, rows_per_block)
            print(f"ray, {rows_per_block:>3} rows a task, {args.cpus} CPUs: {rate:7.1f} rows/s, "
                  f"{rate / args.cpus:6.1f} per CPU = {rate / args.cpus / loop:.2f} of the loop's "
                  f"per core (first block after {first:.1f} s)")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
