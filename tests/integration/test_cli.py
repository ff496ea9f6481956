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
    # Ray Data's advice to turn its progress bars on (ours replaces them) is not shown.
    assert "Progress bars disabled" not in result.stderr
    summary = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert (summary["rows"], summary["errors"]) == (7, 3)
    assert (summary["shards"], summary["committed_shards"], summary["dry_run"]) == (1, 0, False)
    assert summary["tasks"] == [f"detect: detect with owlv2 {tiny_owlv2}, batch 2, 1 actor(s) "
                                f"x 1 CPU 0 GPU"]


def test_dry_run_plans_without_writing(tmp_path, tiny_owlv2, capsys):
    """--dry-run prints what a run would label (fresh, resumed, retried, overwritten) and
    leaves the output as it was."""
    from labeler.cli import main
    from labeler.testing.samples import make_sample_images

    make_sample_images(tmp_path / "images", count=4, bad=True)
    out = tmp_path / "out"
    job = ["run", "--input", str(tmp_path / "images"), "--task", "detect", "--family", "owlv2",
           "--model", tiny_owlv2, "--labels", "cat,dog", "--output", str(out),
           "--batch-size", "4", "--no-progress"]

    def dry_run(*extra) -> str:
        assert main([*job, "--dry-run", *extra]) == 0
        return capsys.readouterr().out

    fresh = dry_run()
    assert not out.exists()
    assert "dry run: nothing was labeled or written" in fresh
    assert "inputs: 7 inputs in 1 shard\n" in fresh
    assert "to label: 7 inputs (0 already done)" in fresh
    assert (f"task detect: detect with owlv2 {tiny_owlv2}, batch 4, 1 actor(s) x 1 CPU 0 GPU"
            in fresh)
    assert f"output: {out} (nothing committed yet)" in fresh

    result = _labeler(*job)
    assert result.returncode == 0, result.stderr[-2000:]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    resumed = dry_run()
    assert "to label: 0 inputs (7 already done)" in resumed
    assert f"output: {out} (resuming: 1 of 1 shard committed)" in resumed
    retry = dry_run("--retry-errors")
    assert "to label: 3 inputs (4 already done; 3 with error rows, labeled again)" in retry
    assert (f"output: {out} (resuming: 1 of 1 shard committed, 1 reopened for their error "
            f"rows)") in retry
    assert main([*job, "--dry-run", "--threshold", "0.5"]) == 2  # another job: refused
    refused = capsys.readouterr().err
    assert "holds results of a different job (tasks.0.threshold: the default there, 0.5 now)" \
        in refused and "Traceback" not in refused
    overwrite = dry_run("--overwrite")
    assert "to label: 7 inputs (0 already done)" in overwrite
    assert f"output: {out} (--overwrite would delete its {len(before) - 1} files)" in overwrite
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched
