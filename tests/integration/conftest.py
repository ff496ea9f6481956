"""A real S3 server for the integration tests: SeaweedFS (`weed mini`) on 127.0.0.1, started
by labeler.testing.s3_server (which the benchmarks use too).

The server runs once per session, with its data and log in a temporary folder. Tests that
talk to it take `s3_env`, which points the standard AWS variables at it for that test only
(monkeypatch): nothing is set for the rest of the session.
"""

from __future__ import annotations

import os

import pytest

from labeler.testing.s3_server import S3ServerError, SeaweedS3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server for the session (see SeaweedS3)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.first_start()
    except S3ServerError as err:
        pytest.fail(str(err))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS variables pointing at the test server, for this test (and the subprocesses
    and Ray workers it starts after setting them) only."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


_bucket_counter = iter(range(10**6))


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A new empty bucket for this test; its name."""
    name = f"test-{os.getpid()}-{next(_bucket_counter)}"
    s3_env.client().create_bucket(Bucket=name)
    return name
