"""The S3 server crashes (kill -9) and restarts in the middle of a job that reads its inputs
from it and writes its output to it: the job completes, every input exactly once, no error
row.

Two crashes, each while a request is in flight: the first once the job has planned (its
decode tasks are about to read the images), the second once the first shard is committed
(the driver is about to upload the next ones). While the server is down, a stand-in socket
on its port accepts the next connection and drops it, which is what a client sees of a crash
mid-request; DOWN_S seconds later the same server (data, ports) starts again.

Why no error row is the right outcome: the outage lasts a few seconds (the restart, then up
to ~5 s of 500s until SeaweedFS's volume server has registered again), and every S3 request
is retried with a fixed backoff over 12.75 s (labeler.storage.S3_MAX_ATTEMPTS), reads in
the decode tasks and shard uploads on the driver alike. An input is not broken because its
storage was briefly away, so it must not be committed as an error row (a rerun would not
label it again). The test has its own server: the session's stays untouched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from labeler.storage import filesystem_for
from labeler.testing.s3_server import S3ServerError, SeaweedS3
from labeler.testing.samples import jpeg_bytes, synthetic_image

# 12 shards of 4: the crash comes after the first commit, with most of the job still to do.
IMAGES = 48
PER_SHARD = 4
START_TIMEOUT_S = 120  # Ray start + model load + first shard on 2 busy cores
FINISH_TIMEOUT_S = 180  # the rest, with up to 12.75 s of retries per request in the outage
# How long the stand-in waits for the job's next request (decode tasks start their workers
# and import the model code first: a few seconds).
NEXT_REQUEST_TIMEOUT_S = 60
# Seconds the server stays down after the request it dropped. With its restart (~1 s) and
# the ~5 s it may answer 500 after, an outage of up to ~8 s: within the 12.75 s that every
# request is retried for, with a margin for a slow start on a busy machine.
DOWN_S = 2.0
# A read that met the first crash waited for the restart (> DOWN_S); a read and decode of
# these small images otherwise takes ~5-70 ms.
WAITED_MS = DOWN_S * 1000
BUCKET = "restart"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A SeaweedFS server of this test's own, the AWS variables pointed at it."""
    server = SeaweedS3(tmp_path / "seaweedfs")
    try:
        server.first_start()
    except S3ServerError as err:
        pytest.fail(str(err))
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def _committed(client, prefix: str = "out/detect/") -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _wait_for(condition, job: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (found := condition()):
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.05)  # poll interval: far below the time a shard takes
    return found


def _crash_during_next_request(server: SeaweedS3) -> None:
    """Kill the server; drop the next connection to its port (the request in flight when it
    crashed); stay down DOWN_S more seconds; start it again."""
    server.kill()
    with socket.socket() as stand_in:
        stand_in.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stand_in.bind(("127.0.0.1", server.ports["s3.port"]))
        stand_in.listen()
        stand_in.settimeout(NEXT_REQUEST_TIMEOUT_S)
        connection, _ = stand_in.accept()
        connection.close()
    time.sleep(DOWN_S)
    server.start()


def test_a_job_completes_across_a_crash_and_restart_of_s3(server, tiny_owlv2, tmp_path):
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    names = [f"img_{i:03d}.jpg" for i in range(IMAGES)]
    for i, name in enumerate(names):
        client.put_object(Bucket=BUCKET, Key=f"images/{name}",
                          Body=jpeg_bytes(synthetic_image(64 + i % 5, 48 + i % 7, seed=i)))
    spec = tmp_path / "job.yaml"
    spec.write_text(f"input: {{path: s3://{BUCKET}/images, files_per_shard: {PER_SHARD}}}\n")
    command = [sys.executable, "-m", "labeler.cli", "run", str(spec),
               "--output", f"s3://{BUCKET}/out", "--task", "detect", "--family", "owlv2",
               "--model", tiny_owlv2, "--labels", "cat,dog", "--batch-size", "2", "--no-progress"]

    # Its own session, so the Ray processes the job starts can be cleaned up after it; its
    # output goes to a file (a pipe nobody reads while the job runs could fill and block it).
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                               env=os.environ.copy(), start_new_session=True)
    try:
        _wait_for(lambda: _committed(client, "out/_job.json"), job, log, "the job planned")
        _crash_during_next_request(server)  # a decode task's read
        before = _wait_for(lambda: _committed(client), job, log, "a shard committed")
        assert job.poll() is None and len(before) < IMAGES // PER_SHARD, before
        _crash_during_next_request(server)  # an upload (or a last read)
        job.wait(timeout=FINISH_TIMEOUT_S)
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)  # the Ray processes it may leave behind
        except ProcessLookupError:
            pass
    output = log.read_text()
    assert job.returncode == 0, output[-3000:]
    assert f"rows: {IMAGES} ({IMAGES} inputs, 0 already done)" in output, output[-3000:]

    fs, path = filesystem_for(f"s3://{BUCKET}/out")
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["id", "error", "width", "timings"])
    assert sorted(table.column("id").to_pylist()) == names
    assert table.column("error").null_count == IMAGES, [
        e for e in table.column("error").to_pylist() if e]
    assert all(table.column("width").to_pylist())
    # Some read did meet the first crash and waited for the restart.
    assert max(t["decode_ms"] for t in table.column("timings").to_pylist()) > WAITED_MS
    assert _committed(client) == [f"out/detect/part-{s:05d}.parquet"
                                  for s in range(IMAGES // PER_SHARD)]
    assert _committed(client, "out/_SUCCESS") == ["out/_SUCCESS"]


def test_a_first_start_whose_port_was_taken_retries_with_fresh_ports(tmp_path):
    """Ports are chosen free, but another process may take one before `weed` binds it: the
    first start then picks fresh ports instead of failing the session."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: a client's connect is refused
        server = SeaweedS3(tmp_path / "seaweedfs")
        server.ports["s3.port"] = taken.getsockname()[1]
        try:
            server.first_start()
            assert server.ports["s3.port"] != taken.getsockname()[1]
            assert server.client().list_buckets()["Buckets"] == []
            log = (server.workdir / "weed.log").read_text(errors="replace")
            assert f"port {taken.getsockname()[1]} for S3 (specified by flag s3.port) is not " \
                   "available" in log  # the first attempt, refused
        finally:
            server.stop()
