"""Online API load figures (issue 5): requests/s, p50 and p99 latency at 1, 8 and 32
concurrent clients, with dynamic batching and with batch size 1, on the tiny OWLv2.

Everything runs on this machine: a local Ray, the Serve application on 127.0.0.1 (the
target is checked to be a loopback address), and client threads, each with its own HTTP
session, sending multipart JPEG uploads to POST /v1/detect in a closed loop. Each level
stops after --requests requests or --seconds seconds, whichever comes first; the server is
shut down at the end.

    .venv/bin/python benchmarks/serve_load.py                # 96 px tiny model, as the tests
    .venv/bin/python benchmarks/serve_load.py --image-size 960 --requests 200

Three settings: dynamic batching; batch size 1 with the same replica capacity (requests
wait in the replica), which isolates batching; and batch size 1 with Serve's default
capacity for it (2 in the replica, the rest wait in Serve's router). Clients, proxy,
ingress and the model replica share the machine's cores, so the figures include the
clients' own cost.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import requests  # noqa: E402

from labeler.serve.config import ServeSpec  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from labeler.testing.ports import free_port  # noqa: E402
from labeler.testing.samples import jpeg_bytes, synthetic_image  # noqa: E402

LABELS = ["a photo of a cat", "a photo of a dog", "a car"]
# Random tiny weights score most boxes high; 0.9 keeps the response near a real model's size.
THRESHOLD = 0.9
# 640x480: a typical image sent by an annotation tool, small enough that upload and decode
# do not swamp the model.
IMAGE_SIZE = (640, 480)
DISTINCT_IMAGES = 16



# Where the benchmarks keep their tiny models between runs.
WORK = Path(tempfile.gettempdir()) / "labeler-serve-bench"


def tiny_owlv2(image_size: int) -> Path:
    """The tiny OWLv2 at `image_size` px input, built once under WORK."""
    model_dir = WORK / f"owlv2-{image_size}"
    if not (model_dir / "config.json").exists():
        build_tiny_model("owlv2", model_dir, image_size=image_size)
    return model_dir


def _check_loopback(url: str) -> None:
    host = url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to load {url}: only loopback addresses are targets")


def post_detect(session: requests.Session, url: str, images: list[bytes],
                n: int) -> requests.Response:
    """Request n: images[n] (cycling) uploaded to /v1/detect."""
    return session.post(f"{url}/v1/detect", timeout=30,
                        files={"image": (f"{n}.jpg", images[n % len(images)])})


def run_level(url: str, images: list[bytes], clients: int, max_requests: int,
              max_seconds: float, send: Callable = post_detect) -> dict:
    """Closed loop: `clients` threads send requests (send(session, url, images, n)) until
    max_requests or max_seconds."""
    latencies: list[float] = []
    failures: dict[int, int] = {}
    lock = threading.Lock()
    sent = [0]
    deadline = time.perf_counter() + max_seconds

    def worker(k: int) -> None:
        session = requests.Session()
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    break
                n = sent[0]
                sent[0] += 1
            start = time.perf_counter()
            response = send(session, url, images, n)
            elapsed = time.perf_counter() - start
            with lock:
                if response.status_code == 200:
                    latencies.append(elapsed)
                else:
                    failures[response.status_code] = failures.get(response.status_code, 0) + 1
        session.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    return {"clients": clients, "ok": len(latencies), "failures": failures, "wall_s": wall,
            "rps": len(latencies) / wall,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99_ms": p99 * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=300, help="per level, at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level, at most")
    parser.add_argument("--image-size", type=int, default=96, help="tiny OWLv2 input size")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    parser.add_argument("--preprocess", choices=["processor", "fast"], default="fast",
                        help="the task's preprocess mode (processor: transformers', exact)")
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs of the replica")
    parser.add_argument("--concurrent-batches", type=int, nargs="+", default=[1, 2],
                        help="dynamic batching once per value: batches the replica runs at "
                             "once (resources.concurrent_batches; 2 by default for OWLv2 "
                             "on a GPU)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from labeler.serve.server import start

    model_dir = tiny_owlv2(args.image_size)
    images = [jpeg_bytes(synthetic_image(*IMAGE_SIZE, seed=i)) for i in range(DISTINCT_IMAGES)]

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    port = free_port()
    print(f"# {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"# {os.cpu_count()} cores; tiny OWLv2 at {args.image_size} px, {len(LABELS)} labels; "
          f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG uploads; preprocess {args.preprocess}; "
          f"replica {args.model_cpus:g} CPU")
    print(f"{'batching':<32} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ok':>5}  failures")
    try:
        capacity = 2 * args.max_batch_size  # the batching mode's default: 2 batches
        # (label, max batch size, wait, replica capacity, batches at once); the capacity of
        # N at once is the default (N + 1) x batch: those running and the next one filling.
        modes = [
            (f"max {args.max_batch_size}, {args.batch_wait_timeout_s * 1000:g} ms wait"
             + (f", {n} at once" if n > 1 else ""),
             args.max_batch_size, args.batch_wait_timeout_s, (n + 1) * args.max_batch_size, n)
            for n in args.concurrent_batches]
        modes += [
            # Same replica capacity as the first: only batching differs.
            (f"none, {capacity} in replica", 1, 0.0, capacity, 1),
            # What `--max-batch-size 1` gives by default: the rest wait in Serve's router.
            ("none, 2 in replica", 1, 0.0, 2, 1),
        ]
        for label, batch, wait, ongoing, at_once in modes:
            spec = ServeSpec.model_validate({
                "host": "127.0.0.1", "port": port,
                "models": [{"name": "detector", "task": "detect",
                            "model": {"family": "owlv2", "source": str(model_dir)},
                            "labels": LABELS, "threshold": THRESHOLD,
                            "preprocess": args.preprocess,
                            "resources": {"num_cpus": args.model_cpus,
                                          "concurrent_batches": at_once},
                            "serving": {"max_batch_size": batch, "batch_wait_timeout_s": wait,
                                        "max_ongoing_requests": ongoing,
                                        "max_queued_requests": 1024}}]})
            url, _ = start(spec)
            _check_loopback(url)
            run_level(url, images, 4, 40, 10.0)  # warm-up: threads, connections, first batches
            for clients in args.clients:
                r = run_level(url, images, clients, args.requests, args.seconds)
                print(f"{label:<32} {clients:>7} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                      f"{r['p99_ms']:>8.1f} {r['ok']:>5}  {r['failures'] or ''}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
