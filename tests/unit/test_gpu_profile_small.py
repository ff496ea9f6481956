"""benchmarks/gpu_profile.py --small: the profiling path on CPU with a tiny model, and the
device-time arithmetic it reports on a GPU."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pytest

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
