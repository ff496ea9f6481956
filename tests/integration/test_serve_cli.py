"""`labeler serve` as the acceptance checks run it: flags only, tokens from the environment,
labels per request. The command starts its own local Ray, so this file costs ~30 s."""

import os
import signal
import subprocess
import sys
import time

import requests

from labeler.testing.ports import free_port
from labeler.testing.samples import jpeg_bytes, synthetic_image

# Starting Ray, Serve and the model on two busy cores takes ~20 s; 180 s is far beyond it
# and still ends a hung start.
READY_WITHIN_S = 180



def test_serve_command_answers_detect_with_a_token(tiny_owlv2):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LABELER_API_TOKENS": "tok-a, tok-b", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "serve", "--family", "owlv2", "--model", tiny_owlv2,
         "--task", "detect", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = requests.get(f"{url}/readyz", timeout=10)
                if ready.status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # still starting
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert ready is not None and ready.status_code == 200

        image = jpeg_bytes(synthetic_image(160, 120, seed=5))
        auth = {"Authorization": "Bearer tok-b"}
        response = requests.post(f"{url}/v1/detect", headers=auth, timeout=30,
                                 files={"image": ("a.jpg", image)},
                                 data={"labels": "cat,dog", "threshold": "0.1"})
        assert response.status_code == 200, response.text
        record = response.json()
        assert (record["width"], record["height"], record["task"]) == (160, 120, "detect")
        assert record["detections"] and {d["label"] for d in record["detections"]} <= {"cat", "dog"}

        no_labels = requests.post(f"{url}/v1/detect", headers=auth, timeout=30,
                                  files={"image": ("a.jpg", image)})
        assert no_labels.status_code == 422
        assert "needs at least one label" in no_labels.json()["error"]
        assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)  # serve.shutdown(), then Ray stops with the process
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_refuses_replicas_asking_for_more_gpus_than_the_machine_has(tiny_owlv2):
    """On a Ray of its own, Serve would wait for ever to place them: refused at once."""
    import torch

    gpus = torch.cuda.device_count()
    result = _serve_on_own_ray(tiny_owlv2, free_port(), "--num-gpus", str(gpus + 1))
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"models.0.resources.num_gpus: a replica needs {gpus + 1} GPU, but this "
            f"machine's Ray has") in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_model_that_cannot_load_before_starting_ray(tmp_path):
    """Its replicas would never start: refused at once, naming the field."""
    missing = tmp_path / "no-such-model"
    result = subprocess.run(
        [sys.executable, "-m", "labeler.cli", "serve", "--family", "owlv2", "--model",
         str(missing), "--task", "detect", "--labels", "cat", "--host", "127.0.0.1",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=READY_WITHIN_S)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"models.0.model.source: no such model folder {str(missing)!r}" in result.stderr
    assert "Traceback" not in result.stderr and "Started a local Ray" not in result.stderr


def _serve_on_own_ray(model: str, port: int, *flags: str) -> subprocess.CompletedProcess:
    """`labeler serve` of a tiny OWLv2 detect model on 127.0.0.1:port, starting a Ray of its
    own (RAY_ADDRESS unset), run to its exit."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "labeler.cli", "serve", "--family", "owlv2", "--model", model,
         "--task", "detect", "--labels", "cat", "--host", "127.0.0.1", "--port", str(port),
         *flags],
        capture_output=True, text=True, env={**env, "RAY_AUTH_MODE": "disabled"},
        timeout=READY_WITHIN_S)


def test_serve_refuses_a_port_another_program_holds(tiny_owlv2):
    """Serve's proxy failed to bind it after a minute of retries, in a hundred lines of
    tracebacks, exit 1: refused once the local Ray is up, exit 2, naming the port."""
    import socket

    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = _serve_on_own_ray(tiny_owlv2, port)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"error: port: cannot listen on 127.0.0.1:{port}: another program listens there "
            f"(an earlier labeler serve?); pass a free --port, or stop it") in result.stderr
    assert "Traceback" not in result.stderr
