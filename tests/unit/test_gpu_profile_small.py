"""benchmarks/gpu_profile.py --small: the profiling path on CPU with a tiny model, and the
device-time arithmetic it reports on a GPU."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
try:
    from benchmarks import gpu_profile
finally:
    sys.path.remove(str(ROOT))


def test_merged_time_counts_overlapping_intervals_once():
    assert gpu_profile.merged_microseconds([]) == 0
    assert gpu_profile.merged_microseconds([(0, 10), (20, 25)]) == 15
    assert gpu_profile.merged_microseconds([(0, 10), (5, 12), (2, 4)]) == 12  # overlap, inside
    assert gpu_profile.merged_microseconds([(20, 30), (0, 10), (10, 20)]) == 30  # unsorted


def test_device_activity_counts_kernels_and_merges_their_time():
    """What the PROFILE line reports on a GPU, from events shaped as torch's: device events
    (kernels, copies, fills) make the busy time; host events count for neither."""
    def event(name, device, start, end):
        return SimpleNamespace(name=name, device_type=device,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [event("aten::mm", DeviceType.CPU, 0, 50),
              event("cudaLaunchKernel", DeviceType.CPU, 1, 2),
              event("sm90_gemm_kernel", DeviceType.CUDA, 10, 30),
              event("Memcpy HtoD (Pinned -> Device)", DeviceType.CUDA, 0, 12),
              event("Memset (Device)", DeviceType.CUDA, 40, 41),
              event("elementwise_kernel", DeviceType.CUDA, 30, 35)]
    busy, kernels = gpu_profile.device_activity(events)
    assert busy == 36  # 0-35 merged, plus 40-41
    assert kernels == 2  # the copy and the fill are not kernels


def test_small_profile_prints_the_batch_and_its_busiest_operations(tmp_path, capsys):
    assert gpu_profile.main(["--small", "--cases", "florence2-base", "--batch", "2",
                             "--trace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = re.search(r"^PROFILE case=florence2-base-caption batch=2 compile=False "
                     r"wall_ms=([\d.]+) device_busy=n/a \(CPU\) ms/img preprocess=[\d.]+ "
                     r"predict=([\d.]+) postprocess=[\d.]+$", out, re.M)
    assert line and float(line.group(1)) > 0 and float(line.group(2)) > 0
    assert "Self CPU time total" in out and "aten::" in out
    with gzip.open(tmp_path / "florence2-base-caption.json.gz") as trace:
        assert json.load(trace)["traceEvents"]


@pytest.mark.parametrize("argv", [["--cases", "nothing-like-this"],
                                  ["--cases", "qwen2", "--batch", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_profile.main(argv)
    assert exit_info.value.code == 2
