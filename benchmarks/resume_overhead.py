"""Resume overhead: finishing a job that was 90% done vs labeling that last 10% afresh.

With the tiny OWLv2 (labeler.testing.build_tiny_model("owlv2"), `--preprocess fast` so the
model side stays cheap) and N 1280x720 JPEGs (synthetic_image + jpeg_bytes), in shards of
`--per-shard` images:
  1. `labeler run` labels everything (not timed: it makes the 90%-done output);
  2. the last 10% of the committed shard files are deleted, as if the job had died there;
  3. resume: the same command again, timed; it must label exactly the deleted shards;
  4. fresh: the same command over a folder holding only those 10% of images, into a new
     output, timed.
Each run is the real command line in its own process (Ray start and model load included,
as a user pays them). Overhead = resume - fresh: what a resume costs beyond the work left
(listing every input, reading the committed shards, fingerprinting the job). Each timed run
is repeated `--rounds` times (re-deleting the shards before each resume); the best is kept.

    .venv/bin/python benchmarks/resume_overhead.py --images 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labeler.testing import build_tiny_model
from labeler.testing.samples import jpeg_bytes, synthetic_image

SIZE = (1280, 720)  # 720p: a common photo/video-frame size
DONE_FRACTION = 0.9  # the job is resumed with this share of its shards committed


def write_images(folder: Path, names: list[str]) -> None:
    """One 1280x720 JPEG per name in `folder` (the seed is the name's index)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(jpeg_bytes(synthetic_image(*SIZE, seed=i)))


def command(images: Path, out: Path, model: Path, spec: Path, per_shard: int) -> list[str]:
    """The `labeler run` command line of the job (a spec file for files_per_shard)."""
    spec.write_text(f"input: {{path: {images}, files_per_shard: {per_shard}}}\n")
    return [sys.executable, "-m", "labeler.cli", "run", str(spec), "--output", str(out),
            "--task", "detect", "--family", "owlv2", "--model", str(model),
            "--labels", "cat,dog", "--preprocess", "fast", "--no-progress"]


def run(cmd: list[str], out: Path) -> tuple[float, dict]:
    """(wall seconds of the process, the job's summary from <out>/_SUCCESS)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall, json.loads((out / "_SUCCESS").read_text())


def shard_files(out: Path) -> list[Path]:
    return sorted((out / "detect").glob("part-*.parquet"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--per-shard", type=int, default=50, help="images per shard file")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each; best kept")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny model is local; never the hub

    with tempfile.TemporaryDirectory(prefix="resume-") as tmp:
        tmp = Path(tmp)
        model = build_tiny_model("owlv2", tmp / "owlv2")
        names = [f"img_{i:05d}.jpg" for i in range(args.images)]
        write_images(tmp / "all", names)
        out = tmp / "out"
        full_cmd = command(tmp / "all", out, model, tmp / "all.yaml", args.per_shard)
        full_wall, full = run(full_cmd, out)

        shards = shard_files(out)
        kept = round(len(shards) * DONE_FRACTION)
        removed = shards[kept:]
        # The images of the removed shards, for the fresh run (plan order = sorted names).
        last = tmp / "last"
        last.mkdir()
        for name in names[kept * args.per_shard:]:
            os.link(tmp / "all" / name, last / name)
        left = len(names) - kept * args.per_shard

        fresh_cmd = command(last, tmp / "fresh", model, tmp / "last.yaml", args.per_shard)
        resumes, freshes = [], []
        for _ in range(args.rounds):
            for path in removed:
                path.unlink()
            wall, summary = run(full_cmd, out)
            if (summary["skipped_inputs"], summary["rows"]) != (len(names) - left, left):
                raise SystemExit(f"resume did not label exactly the removed shards: {summary}")
            resumes.append((wall, summary))
            shutil.rmtree(tmp / "fresh", ignore_errors=True)
            wall, summary = run(fresh_cmd, tmp / "fresh")
            freshes.append((wall, summary))
        resume = min(resumes, key=lambda r: r[0])
        fresh = min(freshes, key=lambda r: r[0])

    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"job: {shlex.join(['labeler', *full_cmd[3:]])}")
    print(f"{args.images} JPEGs {SIZE[0]}x{SIZE[1]}, {len(shards)} shards of {args.per_shard}, "
          f"tiny OWLv2, {os.cpu_count()} CPUs, best of {args.rounds} rounds")
    print(f"  full job ({args.images} images):       {full_wall:6.1f} s process, "
          f"{full['wall_s']:6.1f} s job, {full['steady_images_per_s']:.1f} images/s steady")
    for name, (wall, s) in (("resume (90% done)", resume), ("fresh (the last 10%)", fresh)):
        print(f"  {name:<22} {wall:6.1f} s process, {s['wall_s']:6.1f} s job "
              f"(Ray start {s['ray_start_s']:.1f} s, first result {s['first_result_s']:.1f} s), "
              f"{s['rows']} rows, {s['skipped_inputs']} skipped")
    print(f"  resume overhead: {resume[0] - fresh[0]:+.2f} s process "
          f"({resume[0] / fresh[0]:.2f}x), {resume[1]['wall_s'] - fresh[1]['wall_s']:+.2f} s job "
          f"({resume[1]['wall_s'] / fresh[1]['wall_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
