"""What drawn boxes cost online: /v1/detect-by-example requests/s and latency by query.

The Serve application on 127.0.0.1 (a local Ray) serves the tiny OWLv2 twice as
detect-by-example: `mugs` with a query image, `finder` without (requests bring examples).
Client threads upload 640x480 JPEGs in a closed loop (benchmarks/serve_load.run_level), at
1 and 8 concurrent clients, for each way of giving the query:

  query image           the served query image (embedded once, at load)
  box in the image      one box drawn in the uploaded image (`examples`)
  example image, same   a second image uploaded with the box drawn on it, the same one each
                        time: the replica embeds it once and then finds it in its cache
  example image, new    the same, with the box moved every request: a cache miss each time,
                        so one more forward pass (and a second decode) per request

    .venv/bin/python benchmarks/serve_examples.py [--image-size 960] [--requests 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import IMAGE_SIZE, WORK, _check_loopback, run_level, tiny_owlv2  # noqa: E402

from labeler.serve.config import ServeSpec  # noqa: E402
from labeler.testing.ports import free_port  # noqa: E402
from labeler.testing.samples import jpeg_bytes, synthetic_image  # noqa: E402

DISTINCT_IMAGES = 16
BOX = [100, 120, 260, 300]  # a box in the 640x480 images


def _post(url: str, files: dict, data: dict, session):
    return session.post(f"{url}/v1/detect-by-example", timeout=60, files=files, data=data)


def query_image(session, url, images, n):
    return _post(url, {"image": (f"{n}.jpg", images[n % len(images)])}, {"model": "mugs"},
                 session)


def box_in_the_image(session, url, images, n):
    return _post(url, {"image": (f"{n}.jpg", images[n % len(images)])},
                 {"model": "finder", "examples": json.dumps([{"label": "mug", "box": BOX}])},
                 session)


def example_image(moved: bool):
    sent = itertools.count()  # across levels: a moved box is never one sent before

    def send(session, url, images, n):
        shift = next(sent) % 380 if moved else 0  # a new box: a new cache key (380 in all)
        box = [BOX[0] + shift, BOX[1], BOX[2] + shift, BOX[3]]
        return _post(url, {"image": (f"{n}.jpg", images[n % len(images)]),
                           "example_image": ("example.jpg", images[-1])},
                     {"model": "finder", "examples": json.dumps([{"label": "mug",
                                                                  "box": box}])}, session)
    return send


MODES = {"query image": query_image, "box in the image": box_in_the_image,
         "example image, same": example_image(False), "example image, new": example_image(True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=150, help="per level, at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="per level, at most")
    parser.add_argument("--image-size", type=int, default=96, help="tiny OWLv2 input size")
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs of each replica")
    args = parser.parse_args()

    import ray
    from ray import serve

    from labeler.serve.server import start

    model_dir = tiny_owlv2(args.image_size)
    query = WORK / "mug.png"
    synthetic_image(120, 100, seed=99).save(query)
    images = [jpeg_bytes(synthetic_image(*IMAGE_SIZE, seed=i)) for i in range(DISTINCT_IMAGES)]

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    model = {"family": "owlv2", "source": str(model_dir)}
    serving = {"max_batch_size": 16, "batch_wait_timeout_s": 0.005, "max_queued_requests": 1024}
    spec = ServeSpec.model_validate({
        "host": "127.0.0.1", "port": free_port(), "models": [
            {"name": "mugs", "task": "detect-by-example", "model": model,
             "query_image": str(query), "threshold": 0.5, "preprocess": "fast",
             "resources": {"num_cpus": args.model_cpus / 2}, "serving": serving},
            {"name": "finder", "task": "detect-by-example", "model": model,
             "threshold": 0.5, "preprocess": "fast",
             "resources": {"num_cpus": args.model_cpus / 2}, "serving": serving}]})
    print(f"# {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"# {os.cpu_count()} cores; tiny OWLv2 at {args.image_size} px; "
          f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG uploads; two replicas of "
          f"{args.model_cpus / 2:g} CPU")
    print(f"{'query':<22} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ok':>5}  failures")
    try:
        url, _ = start(spec)
        _check_loopback(url)
        for name, send in MODES.items():
            run_level(url, images, 4, 20, 10.0, send)  # warm-up
            for clients in args.clients:
                r = run_level(url, images, clients, args.requests, args.seconds, send)
                print(f"{name:<22} {clients:>7} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
                      f"{r['p99_ms']:>8.1f} {r['ok']:>5}  {r['failures'] or ''}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
