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


@pytest.fixture(scope="session")
def two_owlv2_tasks(tiny_owlv2):
    """batch size -> a spec's `tasks`: two tiny OWLv2 detect tasks, owl_a and owl_b, that ask
    differently (labeler fuse and select compare them)."""
    def tasks(batch: int) -> str:
        return f"""tasks:
  - name: owl_a
    task: detect
    model: {{family: owlv2, source: {tiny_owlv2}}}
    labels: [cat, dog]
    threshold: 0.3
    resources: {{batch_size: {batch}, num_cpus: 0.5}}
  - name: owl_b
    task: detect
    model: {{family: owlv2, source: {tiny_owlv2}}}
    labels: [cat, dog]
    templates: ["a photo of a {{}}."]
    threshold: 0.2
    resources: {{batch_size: {batch}, num_cpus: 0.5}}
"""
    return tasks


@pytest.fixture(scope="session")
def two_task_job(ray_local, two_owlv2_tasks, tmp_path_factory):
    """6 sample images and 3 bad files, 4 per shard (3 part files), labeled by the two tasks
    of two_owlv2_tasks -> (output folder, {task: {id: row}})."""
    import pyarrow.dataset as pads

    from labeler.config import load_job_spec
    from labeler.jobs.images import run_image_job
    from labeler.testing.samples import make_sample_images

    base = tmp_path_factory.mktemp("two_task_job")
    make_sample_images(base / "images", count=6, bad=True)
    spec = base / "job.yaml"
    spec.write_text(f"input: {{path: {base / 'images'}, files_per_shard: 4}}\n"
                    f"output: {{path: {base / 'out'}}}\n{two_owlv2_tasks(batch=4)}")
    run_image_job(load_job_spec(spec), progress=False)
    rows = {}
    for task in ("owl_a", "owl_b"):
        table = pads.dataset(base / "out" / task, format="parquet").to_table()
        rows[task] = {r["id"]: r for r in table.to_pylist()}
    return str(base / "out"), rows
