"""S3 keys travel in a runtime_env only to a Ray this process started (labeler.ray_node): a runtime_env is shown
by the Ray dashboard and its job and Serve APIs, so a driver joining a cluster sends the
endpoint and region but not the keys, unless LABELER_FORWARD_CREDENTIALS=1. A real local Ray
in one process, joined from another."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAD = """
import json, sys, ray
ray.init(num_cpus=1, include_dashboard=False)
from labeler.ray_node import ray_started_here
from labeler.storage import worker_env
print(json.dumps({"address": ray.get_runtime_context().gcs_address, "env": worker_env(),
                  "here": ray_started_here()}), flush=True)
sys.stdin.read()  # the Ray lives until the test closes stdin
"""
JOINER = """
import json, sys, ray
ray.init(address=sys.argv[1])
from labeler.ray_node import ray_started_here
from labeler.storage import worker_env
print(json.dumps({**worker_env(), "here": ray_started_here()}))
"""


def test_keys_go_only_to_a_ray_started_here_unless_asked(tmp_path):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "RAY_ADDRESS": ""}
    env.pop("LABELER_FORWARD_CREDENTIALS", None)
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        started = json.loads(head.stdout.readline())
        assert started["here"] is True
        assert started["env"]["runtime_env"]["env_vars"] == {
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}

        def joined(**extra) -> dict:
            out = subprocess.run([sys.executable, "-c", JOINER, started["address"]],
                                 capture_output=True, text=True, env={**env, **extra},
                                 cwd=tmp_path, timeout=120, check=True)
            answer = json.loads(out.stdout.strip().splitlines()[-1])
            # A joined Ray is not this machine's alone (labeler serve skips its GPU check).
            assert answer["here"] is False
            return answer["runtime_env"]["env_vars"]

        assert joined() == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
        assert joined(LABELER_FORWARD_CREDENTIALS="1") == started["env"]["runtime_env"][
            "env_vars"]
    finally:
        head.stdin.close()
        head.wait(timeout=60)
