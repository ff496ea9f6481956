"""benchmarks/qwen2_vl_vision.py on CPU: both ways of attending give the same tower output,
and the figure it prints counts the calls each made."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
try:
    from benchmarks import qwen2_vl_vision
finally:
    sys.path.remove(str(ROOT))


def test_prints_times_calls_and_no_difference(capsys):
    assert qwen2_vl_vision.main(["--images", "3", "--repeats", "1", "--image-size", "56"]) == 0
    out = capsys.readouterr().out
    # 32 blocks: transformers attends each of the 3 images alone, ours all 3 at once.
    assert re.search(r"^transformers: [\d.]+ ms a forward .* attention calls 96$", out, re.M)
    assert re.search(r"^runs: [\d.]+ ms a forward .* attention calls 32$", out, re.M)
    result = re.search(r"^RESULT qwen2_vl_vision widths=narrow images=3 size=56 mixed=False "
                       r"transformers_ms=[\d.]+ runs_ms=[\d.]+ saved_ms/img=-?[\d.]+ "
                       r"max_abs_diff=(\S+)$", out, re.M)
    assert result and float(result.group(1)) <= 1e-5


def test_mixed_sizes_make_one_call_a_layer_per_size(capsys):
    """Square and 4:3 images alternating: transformers attends each alone, ours groups them
    into two runs."""
    argv = ["--images", "3", "--repeats", "1", "--image-size", "56", "--mixed"]
    assert qwen2_vl_vision.main(argv) == 0
    out = capsys.readouterr().out
    assert "grids=[(1, 4, 4), (1, 2, 4)]" in out
    assert re.search(r"^transformers: .* attention calls 96$", out, re.M)
    assert re.search(r"^runs: .* attention calls 64$", out, re.M)
    difference = re.search(r"mixed=True .* max_abs_diff=(\S+)$", out, re.M)
    assert difference and float(difference.group(1)) <= 1e-5


@pytest.mark.parametrize("argv", [["--images", "0"], ["--repeats", "0"],
                                  ["--image-size", "30"], ["--mixed", "--image-size", "28"]])
def test_bad_counts_and_sizes_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        qwen2_vl_vision.main(argv)
    assert exit_info.value.code == 2
    assert "--" in capsys.readouterr().err
