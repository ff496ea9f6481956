"""benchmarks/gpu_throughput.py --small: the GPU benchmark's code path, tiny and on CPU.

The full-size run needs a GPU machine, which has no Ray: the benchmark and the adapters it
drives must import without Ray.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_mode_prints_a_figure_for_every_case(capsys):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import gpu_throughput
    finally:
        sys.path.remove(str(ROOT))

    assert gpu_throughput.main(["--small"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "command: " in out
    for case in gpu_throughput.CASES:
        result = re.search(rf"^RESULT case={re.escape(case.name)} images/s=([0-9.]+) "
                           rf"TFLOP/s=(\S+) batch=(\d+)", out, re.MULTILINE)
        assert result, f"no RESULT line for {case.name}:\n{out}"
        assert float(result.group(1)) > 0 and float(result.group(2)) > 0
        for batch in gpu_throughput.SMALL_BATCH_SIZES:  # every batch size of the sweep ran
            assert re.search(rf"^case={re.escape(case.name)} batch={batch} images/s=[0-9.]+ ",
                             out, re.MULTILINE), f"{case.name} batch {batch} missing"
        flops = re.search(rf"^case={re.escape(case.name)} GFLOP/img=(\S+)", out, re.MULTILINE)
        assert flops and float(flops.group(1)) > 0
    # OWLv2 keeps about OWL_BOXES_PER_IMAGE boxes per image, not every patch.
    dets = [float(d) for d in re.findall(r"dets/img=([0-9.]+)", out)]
    assert dets and all(0 < d < 100 for d in dets)
    assert "out of GPU memory" not in out


def test_benchmark_and_adapters_import_without_ray():
    code = ("import sys; import benchmarks.gpu_throughput, labeler.registry, labeler.models.owlv2, "
            "labeler.models.florence2, labeler.models.qwen2_vl, labeler.testing; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'ray'); "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # a cold import of torch + transformers takes seconds
    assert done.returncode == 0, done.stderr[-3000:]
