"""What the driver of a job spends per output row: the job's own pipeline (the decode stage
and the model actors, labeler.jobs.runner) consumed on the driver by the Parquet sink, as
`labeler run` does, with the tiny OWLv2 at 96 px (fast mode) so that the model costs next
to nothing, over N corrupt files (error rows: no model work) or N small JPEGs.

Prints the steady rate (after the first result), the driver process's CPU time per row in
that phase (every thread: Ray Data's streaming executor and iterator, Ray's core worker, and
the main thread), the main thread's share (iterating, sink.add, the summary's counts) and
Ray Data's per-operator stats with --stats.

    .venv/bin/python benchmarks/driver_cpu.py --inputs 4000 --errors --batch 64 --block 16 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=4000)
    parser.add_argument("--errors", action="store_true", help="corrupt files: error rows only")
    parser.add_argument("--batch", type=int, default=8, help="the actor's batch_size")
    parser.add_argument("--block", type=int, nargs="+", default=[16],
                        help="inputs per decode task (the job's: 16)")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's stats")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from labeler.config import JobSpec
    from labeler.jobs import runner
    from labeler.sinks.parquet import ShardedParquetSink
    from labeler.sources import plan_source
    from labeler.testing import build_tiny_model
    from labeler.testing.samples import jpeg_bytes, synthetic_image

    with tempfile.TemporaryDirectory(prefix="driver-cpu-") as tmp:
        tmp = Path(tmp)
        model = build_tiny_model("owlv2", tmp / "owlv2", image_size=96, vision_heads=1)
        images = tmp / "in"
        images.mkdir()
        samples = [jpeg_bytes(synthetic_image(160, 120, seed=s)) for s in range(16)]
        for i in range(args.inputs):
            data = b"not an image %d" % i if args.errors else samples[i % 16]
            (images / f"img_{i:06d}.jpg").write_bytes(data)
        spec = JobSpec.model_validate({
            "input": {"path": str(images)}, "output": {"path": str(tmp / "out")},
            "ray": {"num_cpus": 2},
            "tasks": [{"task": "detect", "model": {"family": "owlv2", "source": str(model)},
                       "labels": ["cat", "dog"], "preprocess": "fast",
                       "resources": {"batch_size": args.batch}}]})
        plan = plan_source(spec.input.path, spec.input.effective_files_per_shard, "image")
        todo = [i.row(False) for i in plan.items]
        expected: dict[int, int] = {}
        for item in plan.items:
            expected[item.shard] = expected.get(item.shard, 0) + 1
        runner.init_ray(spec)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"{args.inputs} {'corrupt files' if args.errors else 'JPEGs 160x120'}, tiny OWLv2"
              f" 96 px fast, batch {args.batch}, {os.cpu_count()} CPUs")
        for block in args.block:
            sink = ShardedParquetSink(tmp / f"out-{block}", expected, ["detect"], "fp")
            summary = runner.JobSummary(output="", inputs=len(todo))
            ds = runner._model_stages(runner._decoded(spec, todo, block), list(spec.tasks))
            first = None
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                sink.add(table)
                runner._count(summary, table, "detect")
                if first is None:
                    first = (time.perf_counter(), summary.rows, time.process_time(),
                             time.thread_time())
            wall, cpu, main_cpu = (time.perf_counter() - first[0],
                                   time.process_time() - first[2], time.thread_time() - first[3])
            rows = summary.rows - first[1]
            print(f"  {block:3d} inputs a decode task: {rows / wall:6.0f} rows/s steady; driver "
                  f"CPU {cpu / rows * 1e6:5.0f} us/row ({cpu / wall:.2f} cores), main thread "
                  f"{main_cpu / rows * 1e6:4.0f} us/row")
            if args.stats:
                print(ds.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
