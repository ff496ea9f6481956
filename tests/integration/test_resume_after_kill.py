"""kill -9 of a running job, then the same command again: every input exactly once, and the
shards committed before the kill are neither rewritten nor recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads

from labeler.testing.samples import synthetic_image

# 24 shards of 4: results reach the driver in bursts of several shards (Ray Data hands over
# finished blocks together), so the kill must land well before the end.
IMAGES = 96
PER_SHARD = 4
# Wait for this many committed shards before the kill: some done, most still to do.
KILL_AFTER_SHARDS = 2
START_TIMEOUT_S = 120  # Ray start + model load + first shards on 2 busy cores


def _command(images, out, model, spec):
    spec.write_text(f"input: {{path: {images}, files_per_shard: {PER_SHARD}}}\n")
    return [sys.executable, "-m", "labeler.cli", "run", str(spec), "--output", str(out),
            "--task", "detect", "--family", "owlv2", "--model", model, "--labels", "cat,dog",
            "--batch-size", "2", "--no-progress"]


def _committed(out):
    folder = out / "detect"
    return sorted(p for p in folder.glob("part-*.parquet")) if folder.exists() else []


def test_a_killed_job_resumes_with_every_input_exactly_once(tmp_path, tiny_owlv2):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(IMAGES):
        synthetic_image(64 + i % 5, 48 + i % 7, seed=i).save(images / f"img_{i:03d}.png")
    out = tmp_path / "out"
    command = _command(images, out, tiny_owlv2, tmp_path / "job.yaml")

    # Its own session, so the Ray processes the driver started can be cleaned up after it.
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while len(_committed(out)) < KILL_AFTER_SHARDS:
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)  # the driver only, as `kill -9 <pid>` does
        first.wait()
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # the Ray processes it left behind
        except ProcessLookupError:
            pass
    done_before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in _committed(out)}
    assert KILL_AFTER_SHARDS <= len(done_before) < IMAGES // PER_SHARD, len(done_before)
    assert not (out / "_SUCCESS").exists()

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    skipped = len(done_before) * PER_SHARD
    assert f"rows: {IMAGES - skipped} ({IMAGES} inputs, {skipped} already done)" in second.stdout

    ids = pads.dataset(out, format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(p.name for p in images.iterdir())  # none lost, none twice
    for name, (mtime, data) in done_before.items():  # not rewritten by the second run
        path = out / "detect" / name
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, data)
    assert (out / "_SUCCESS").exists()


def test_ctrl_c_stops_a_job_saying_how_to_resume(tmp_path, tiny_owlv2):
    """Ctrl-C (SIGINT to the driver) ended the job with a KeyboardInterrupt traceback from
    inside Ray Data's iterator and exit 1, not a word of the committed shards."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(IMAGES):
        synthetic_image(64, 48, seed=i).save(images / f"img_{i:03d}.png")
    out = tmp_path / "out"
    command = _command(images, out, tiny_owlv2, tmp_path / "job.yaml")
    # SIGINT as a terminal sends it: handled by Python's default (KeyboardInterrupt) even
    # where the tests run in the background, which would leave it ignored.
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while len(_committed(out)) < KILL_AFTER_SHARDS:
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no shard committed in time"
            time.sleep(0.01)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # Ray processes left behind, if any
        except ProcessLookupError:
            pass
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert (f"interrupted: the shards already committed to {out} are kept; run the same "
            f"command again to label the rest") in err
    committed = len(_committed(out))
    assert KILL_AFTER_SHARDS <= committed < IMAGES // PER_SHARD
    again = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"resuming: {committed} of {IMAGES // PER_SHARD} shards committed"
            in again.stdout), again.stdout
