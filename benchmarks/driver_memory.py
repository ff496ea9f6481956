"""The driver's memory over a whole job of many inputs: `run_job` in this process over N
corrupt files (error rows: no model work; tiny OWLv2, fast mode), shards of 256; RSS and
the sink's pending shards sampled every 0.5 s, and what the sink holds at the end.

    .venv/bin/python benchmarks/driver_memory.py --inputs 100000
"""
import os, sys, time, argparse, threading, resource
os.environ["HF_HUB_OFFLINE"] = "1"
p = argparse.ArgumentParser()
p.add_argument("--inputs", type=int, default=100000)
p.add_argument("--batch", type=int, default=64)
a = p.parse_args()
from labeler.config import JobSpec
from labeler.jobs import runner
from labeler.sinks import parquet
import tempfile
from pathlib import Path
from labeler.testing import build_tiny_model
tmp = tempfile.TemporaryDirectory(prefix="driver-memory-")
D = Path(tmp.name)
build_tiny_model("owlv2", D / "owlv2", image_size=96, vision_heads=1)
(D / "in").mkdir()
for i in range(a.inputs):
    (D / "in" / f"img_{i:06d}.jpg").write_bytes(b"not an image %d" % i)
spec = JobSpec.model_validate({
    "input": {"path": f"{D}/in", "files_per_shard": 256},
    "output": {"path": f"{D}/out", "overwrite": True},
    "ray": {"num_cpus": 2},
    "tasks": [{"task": "detect", "model": {"family": "owlv2", "source": f"{D}/owlv2"},
               "labels": ["cat", "dog"], "preprocess": "fast",
               "resources": {"batch_size": a.batch}}]})
sinks = []
orig = parquet.ShardedParquetSink.__init__
def init(self, *args, **kw):
    orig(self, *args, **kw); sinks.append(self)
parquet.ShardedParquetSink.__init__ = init
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
samples = []
stop = False
def watch():
    while not stop:
        if sinks:
            s = sinks[0]
            pend = list(s._buffers.items())
            rows = sum(t.num_rows for _, ts in pend for t in ts)
            chunks = sum(len(ts) for _, ts in pend)
            samples.append((time.time(), rss(), len(pend), rows, chunks, len(s._parts)))
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True).start()
t0 = time.time(); r0 = rss()
s = runner.run_job(spec, progress=False)
stop = True
print("command: python", " ".join(sys.argv))
print("\n".join(s.lines()[:2]))
sink = sinks[0]
peak = max(x[1] for x in samples)
print(f"inputs {s.inputs}: RSS at start {r0:.0f} MB, peak sampled {peak:.0f} MB, "
      f"end {rss():.0f} MB, ru_maxrss "
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
print(f"pending (task, shard) buffers: max {max(x[2] for x in samples)}, rows in them max "
      f"{max(x[3] for x in samples)}, chunks max {max(x[4] for x in samples)}; _parts max "
      f"{max(x[5] for x in samples)}")
print(f"at the end: _buffers {len(sink._buffers)}, _parts {len(sink._parts)}, _complete_inputs "
      f"{len(sink._complete_inputs)}, _existing {len(sink._existing)}, files_written "
      f"{len(sink.files_written)}, error_reasons {len(s.error_reasons)}")
n = len(samples)
for x in samples[:: max(1, n // 12)]:
    print(f"  t={x[0]-t0:6.1f}s rss {x[1]:6.0f} MB pending {x[2]:3d} rows {x[3]:5d} chunks {x[4]}")
