"""Where one batch's time goes: a case of benchmarks/gpu_throughput.py under torch.profiler.

gpu_throughput.py says how fast; this says why. It builds the same full-size model (random
weights, bf16 on CUDA), sets up the same adapter, runs one warm-up batch (and its compile,
with `--compile`), then one batch of `run_timed` under torch.profiler, and prints:

- `PROFILE` line: the batch's wall time; `device_busy`, the time the GPU spent in kernels,
  copies and fills (their intervals merged), and its share of the wall time: the rest is the
  GPU idle, waiting for the host to issue work; `kernels`, the kernels it ran; `launches`,
  the host's launch calls (one per kernel in eager mode; a CUDA graph's replay runs many
  kernels for one call);
- the operations with the most device time, then those with the most host time (torch's
  key_averages tables), so a host-bound generate shows itself (many small kernels, a low
  device share) and a compute-bound one names its kernels.

    PYTHONPATH=. python3 benchmarks/gpu_profile.py --cases qwen2 --batch 128
    PYTHONPATH=. python3 benchmarks/gpu_profile.py --cases florence2-base --batch 128 --compile
    .venv/bin/python benchmarks/gpu_profile.py --small --cases florence2-base --batch 2  # CPU

`--trace DIR` also writes each case's Chrome trace (DIR/<case>.json.gz, for
chrome://tracing or Perfetto). Without CUDA it runs the tiny models (`--small`), where only
host time is profiled: that checks the code, its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_throughput as bench  # noqa: E402  (the cases, models and adapter set-up)

# Host calls that start work on the GPU: one per kernel in eager mode, one per graph replay.
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch")
TABLE_ROWS = 15


def merged_microseconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of (start, end) intervals, in their unit."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def device_activity(events) -> tuple[float, int]:
    """(microseconds the device was busy, kernels run) from a profile's events."""
    device = [e for e in events if e.device_type == DeviceType.CUDA]
    busy = merged_microseconds([(e.time_range.start, e.time_range.end) for e in device])
    kernels = sum(1 for e in device if not e.name.startswith(("Memcpy", "Memset")))
    return busy, kernels


def profile_case(case: bench.Case, folder: Path, device: torch.device, batch: int,
                 compile_model: bool, trace_dir: Path | None) -> dict:
    """One warm-up batch, then one profiled batch of `run_timed`; prints and returns its
    figures."""
    adapter = bench.case_adapter(case, folder, device, compile_model)
    images = bench.sample_images(case.image_size, batch)
    adapter.run_timed(images, transformed=False)  # warm-up (and compile)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        _, stages = adapter.run_timed(images, transformed=False)  # synchronises on CUDA
        wall_us = (time.perf_counter() - start) * 1e6
    parse_start = time.perf_counter()
    events = prof.events()
    busy_us, kernels = device_activity(events)
    launches = sum(1 for e in events if e.name in LAUNCH_CALLS)
    figures = {"wall_ms": wall_us / 1e3, "device_busy_ms": busy_us / 1e3,
               "device_busy": busy_us / wall_us, "kernels": kernels, "launches": launches}
    stage_text = " ".join(f"{k.removesuffix('_ms')}={v:.2f}" for k, v in stages.items())
    device_text = (f"device_busy_ms={figures['device_busy_ms']:.1f} "
                   f"device_busy={100 * figures['device_busy']:.1f}% kernels={kernels} "
                   f"launches={launches}" if on_gpu else "device_busy=n/a (CPU)")
    print(f"PROFILE case={case.name} batch={batch} compile={compile_model} "
          f"wall_ms={figures['wall_ms']:.1f} {device_text} ms/img {stage_text}", flush=True)
    print(f"(profile of {len(events)} events read in {time.perf_counter() - parse_start:.1f} s)",
          flush=True)
    averages = prof.key_averages()
    if on_gpu:
        print(averages.table(sort_by="self_device_time_total", row_limit=TABLE_ROWS))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=TABLE_ROWS), flush=True)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        plain = trace_dir / f"{case.name}.json"
        prof.export_chrome_trace(str(plain))
        with open(plain, "rb") as source, gzip.open(f"{plain}.gz", "wb") as packed:
            shutil.copyfileobj(source, packed)
        plain.unlink()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", required=True,
                        help="cases of gpu_throughput.py, by name or by the start of one")
    parser.add_argument("--batch", type=int, default=128, help="images in the profiled batch")
    parser.add_argument("--compile", action="store_true", help="the spec's model.compile")
    parser.add_argument("--small", action="store_true",
                        help="tiny models on CPU (the default without CUDA)")
    parser.add_argument("--trace", type=Path, default=None,
                        help="write each case's Chrome trace here, gzipped")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch takes 1 or more")
    cases = [c for c in bench.CASES if any(
        c.name == p or (c.name.startswith(p) and p not in bench.CASE_NAMES) for p in args.cases)]
    if not cases:
        parser.error(f"no case matches {args.cases}; cases: {[c.name for c in bench.CASES]}")
    small = args.small or not torch.cuda.is_available()
    device = torch.device("cpu" if small else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if small:
        cases = [replace(c, image_size=bench.small_size(c.image_size)) for c in cases]
    else:  # a job's GPU actor's threads, as gpu_throughput.py runs its cases
        torch.set_num_threads(bench.ResourceSpec().intra_op_threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; mode: {'small (tiny models)' if small else 'full size'}; "
          f"torch {torch.__version__}; torch threads {torch.get_num_threads()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    try:
        tiny_dirs: dict[str, Path] = {}
        for build_name in dict.fromkeys(c.build for c in cases):
            build = bench.BUILDS[build_name]
            if build.family not in tiny_dirs:
                tiny_dirs[build.family] = bench.build_tiny_model(build.family,
                                                                 root / f"tiny-{build.family}")
            folder = bench.build_model_folder(build, tiny_dirs[build.family],
                                              root / build_name, device, dtype, small)
            for case in (c for c in cases if c.build == build_name):
                profile_case(case, folder, device, args.batch, args.compile, args.trace)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
