"""The command line as a user types it."""

import json
import subprocess
import sys

from transformers import AutoConfig

from labeler.testing import FAMILIES


def _labeler(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "labeler.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_tiny_models_writes_every_family_loadable_offline(tmp_path):
    result = _labeler("tiny-models", str(tmp_path))
    assert result.returncode == 0, result.stderr
    model_types = {"owlv2": "owlv2", "florence2": "florence2", "blip2": "blip-2",
                   "qwen2_vl": "qwen2_vl", "ovis2": "ovis2"}
    assert set(model_types) == set(FAMILIES)
    for family in FAMILIES:
        folder = tmp_path / family
        assert list(folder.glob("*.safetensors")), family
        config = AutoConfig.from_pretrained(folder)  # HF_HUB_OFFLINE=1 from conftest
        assert config.model_type == model_types[family]


def test_run_from_flags_writes_parquet_and_a_summary(tmp_path, tiny_owlv2):
    from labeler.testing.samples import make_sample_images

    make_sample_images(tmp_path / "images", count=4, bad=True)
    result = _labeler("run", "--input", str(tmp_path / "images"), "--task", "detect",
                      "--family", "owlv2", "--model", tiny_owlv2, "--labels", "cat,dog",
                      "--output", str(tmp_path / "out"), "--threshold", "0.4",
                      "--batch-size", "2", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rows: 7 (7 inputs, 0 already done), errors: 3" in result.stdout
    assert f"output: {tmp_path / 'out'}" in result.stdout
    summary = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert (summary["rows"], summary["errors"]) == (7, 3)
