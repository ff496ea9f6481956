"""Planning a job of many inputs: what `labeler run` does before the first image is read.

A job first lists its inputs, gives each an id and a shard, fingerprints the job and opens
the output (labeler.jobs.runner.run_job up to the Ray pipeline). This is all on the driver,
in one process, and it is paid again on every resume, so it must stay linear in the number
of inputs. Each size runs `run_job(dry_run=True)` (the same code, without Ray) in a fresh
process, timed and with its peak RSS, on:

    manifest   a Parquet manifest of N rows (uri, caption), s3:// URIs (never read)
    folder     a local folder of N empty .jpg files in folders of 1,000 (listed, sorted)

and prints seconds and microseconds per input; the last line compares the largest size
with the smallest per input (1.0: linear). With --ray, each manifest size also times what
comes next, on a local Ray: the job's decode dataset over every input
(labeler.jobs.images.decoded_images: ray.data.from_items, one stored block per 16 inputs),
built but not run.

    .venv/bin/python benchmarks/plan_scale.py
    .venv/bin/python benchmarks/plan_scale.py --sizes 10000,100000 --folder-files 0
    .venv/bin/python benchmarks/plan_scale.py --ray --folder-files 0
    .venv/bin/python benchmarks/plan_scale.py --sizes 1000000 --folder-files 0 --subset 1000

--subset plans a job of a subset of the inputs (input.subset, `labeler run --subset`): every
input is listed and hashed, only the subset is sharded and fingerprinted.
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

FILES_PER_FOLDER = 1000


def write_manifest(path: Path, count: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "uri": [f"s3://bucket/images/{i // FILES_PER_FOLDER:06d}/{i:09d}.jpg"
                for i in range(count)],
        "caption": [f"a photo of thing {i}" for i in range(count)]}), path)


def write_folder(path: Path, count: int) -> None:
    for i in range(count):
        folder = path / f"{i // FILES_PER_FOLDER:06d}"
        if i % FILES_PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:09d}.jpg").touch()


def peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM), in KB. Not getrusage's ru_maxrss, which
    Linux carries across fork and exec: a child would report its parent's RSS at its start."""
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))


def plan_once(input_path: str, output: str, with_ray: bool, subset: dict | None = None) -> dict:
    """In this process: a dry run of a detect job over `input_path` (of its `subset`, an
    input.subset, when given); with_ray: then the decode dataset of all its inputs on a
    local Ray, timed apart."""
    from labeler.config import load_job_spec
    from labeler.jobs.runner import run_job

    spec = load_job_spec(None, input=input_path, output=output, task="detect",
                         family="owlv2", model="m", labels=["cat"], subset=subset)
    start = time.perf_counter()
    summary = run_job(spec, progress=False, dry_run=True)
    result = {"inputs": summary.inputs, "listed": summary.listed_inputs,
              "shards": summary.shards,
              "seconds": time.perf_counter() - start,
              "peak_rss_gb": peak_rss_kb() / 1e6}
    if with_ray:
        from labeler.jobs.images import decoded_images
        from labeler.jobs.runner import init_ray
        from labeler.sources import plan_source

        init_ray(spec)
        plan = plan_source(input_path, spec.input.effective_files_per_shard)
        todo = [item.row(False) for item in plan.items]
        start = time.perf_counter()
        decoded_images(spec, todo)
        result["dataset_seconds"] = time.perf_counter() - start
    return result


def measure(kind: str, input_path: str, output: str, with_ray: bool = False,
            subset: str | None = None) -> dict:
    command = [sys.executable, __file__, "--child", input_path, output,
               *(["--ray"] if with_ray else []), *(["--subset", subset] if subset else [])]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{kind} of {input_path}: {out.stderr.strip().splitlines()[-1]}")
    return {"kind": kind, **json.loads(out.stdout.strip().splitlines()[-1])}


def _listed(result: dict) -> int:
    """The inputs a dry run listed (all of them, with or without a subset)."""
    return result["listed"] if result["listed"] is not None else result["inputs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="manifest rows, comma-separated")
    parser.add_argument("--folder-files", type=int, default=100_000,
                        help="files of the folder case (0: skip it)")
    parser.add_argument("--ray", action="store_true",
                        help="also time the decode dataset of every input on a local Ray")
    parser.add_argument("--subset", help="plan a subset of the inputs: N, P%% or a fraction "
                                          "(as labeler run --subset)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray and args.subset:
        parser.error("--ray times the decode dataset of every input; leave out --subset")
    if args.child:
        from labeler.cli import _subset_size

        subset = _subset_size(args.subset) if args.subset else None
        print(json.dumps(plan_once(*args.child, args.ray, subset)))
        return

    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    results = []
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as name:
        tmp = Path(name)
        for size in (int(s) for s in args.sizes.split(",")):
            manifest = tmp / f"manifest-{size}.parquet"
            write_manifest(manifest, size)
            results.append(measure("manifest", str(manifest), str(tmp / f"out-{size}"),
                                   args.ray, args.subset))
        if args.folder_files:
            folder = tmp / "images"
            write_folder(folder, args.folder_files)
            results.append(measure("folder", str(folder), str(tmp / "out-folder"),
                                   subset=args.subset))
    for r in results:
        listed = f" of {r['listed']:>9d}" if r["listed"] is not None else ""
        print(f"  {r['kind']:8s} {r['inputs']:>9d}{listed} inputs {r['shards']:>6d} shards  "
              f"{r['seconds']:7.2f} s  {r['seconds'] / _listed(r) * 1e6:6.1f} us/input listed  "
              f"peak RSS {r['peak_rss_gb']:.2f} GB"
              + (f"; then the decode dataset {r['dataset_seconds']:.1f} s"
                 if "dataset_seconds" in r else ""))
    manifests = [r for r in results if r["kind"] == "manifest"]
    if len(manifests) > 1:
        small, large = manifests[0], manifests[-1]
        ratio = (large["seconds"] / _listed(large)) / (small["seconds"] / _listed(small))
        print(f"per-input time at {_listed(large)} vs {_listed(small)} inputs: {ratio:.2f}x "
              f"(1.0: linear)")


if __name__ == "__main__":
    main()
