"""What boxes drawn in the image (detect-by-example `examples`) cost against a query image.

A query image is embedded once, at setup; drawn examples are embedded per image from its
own forward pass: the class head runs once more without queries (every patch's embedding),
the objectness head runs, and each image's queries are gathered and averaged. This prints,
for OWLv2 B/16 at its full 960 px input (random weights, the default config: the compute of
google/owlv2-base-patch16-ensemble) on this machine's CPU, ms per image of `predict` and of
the whole adapter call:
  query image        the served query image's embedding for every image
  1 example          one box drawn in each image
  8 examples/3 labels eight boxes in each image, three labels (three averaged queries)

    .venv/bin/python benchmarks/owlv2_examples.py [--batch 2] [--repeats 2] [--device cuda]

`--small` runs the tiny checkpoint instead (seconds; what CI's smoke test runs).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import BUILDS, build_model_folder  # noqa: E402

from labeler.config import TaskSpec  # noqa: E402
from labeler.models.base import Example, ImageInput  # noqa: E402
from labeler.models.owlv2 import Owlv2ExampleDetector  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from labeler.testing.samples import synthetic_image  # noqa: E402

IMAGE_SIZE = (640, 480)  # a typical photo
ONE = (Example("mug", (40, 60, 120, 150)),)
EIGHT = tuple(Example(label, (20 + 70 * k, 30 + 40 * (k % 3), 80 + 70 * k, 110 + 40 * (k % 3)))
              for k, label in enumerate(["mug", "plate", "fork"] * 3) if k < 8)
MODES = {"query image": (), "1 example": ONE, "8 examples/3 labels": EIGHT}


def timed(adapter, images: list[ImageInput], repeats: int) -> tuple[float, float]:
    """-> (ms per image of predict, ms per image of the whole call), best of `repeats`."""
    best_predict = best_total = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            inputs = adapter.model_inputs(images)
            before = time.perf_counter()
            raw = adapter.predict(inputs)
            if adapter.device.type == "cuda":
                torch.cuda.synchronize()
            after = time.perf_counter()
            adapter.finish(raw, images)
        end = time.perf_counter()
        best_predict = min(best_predict, (after - before) * 1000 / len(images))
        best_total = min(best_total, (end - start) * 1000 / len(images))
    return best_predict, best_total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="images per call")
    parser.add_argument("--repeats", type=int, default=2, help="calls per mode (best kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--small", action="store_true", help="the tiny checkpoint")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"$ {shlex.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}")
    with tempfile.TemporaryDirectory() as scratch:
        tiny = build_tiny_model("owlv2", Path(scratch) / "tiny")
        folder = tiny if args.small else build_model_folder(
            BUILDS["owlv2-b16"], tiny, Path(scratch) / "b16", device, torch.float32, small=False)
        query = Path(scratch) / "mug.png"
        synthetic_image(120, 100, seed=99).save(query)
        spec = TaskSpec.model_validate({
            "task": "detect-by-example", "query_image": str(query), "threshold": 0.0,
            "model": {"family": "owlv2", "source": str(folder), "dtype": "auto"},
            "resources": {"num_gpus": 1 if device.type == "cuda" else 0}})
        adapter = Owlv2ExampleDetector(spec)
        adapter.setup(device)
        w, h = IMAGE_SIZE
        pixels = [np.asarray(synthetic_image(w, h, seed)) for seed in range(args.batch)]
        print(f"OWLv2 {'tiny' if args.small else 'B/16'} @ {adapter.input_size} px, "
              f"{w}x{h} images, batch {args.batch}, {device}, "
              f"{torch.get_num_threads()} threads")
        base = None
        for mode, examples in MODES.items():
            images = [replace(ImageInput(p, w, h), examples=examples) for p in pixels]
            timed(adapter, images, 1)  # warm-up
            predict_ms, total_ms = timed(adapter, images, args.repeats)
            base = base or predict_ms
            print(f"  {mode:<20} predict {predict_ms:9.1f} ms/image ({predict_ms / base - 1:+6.1%})"
                  f"   whole call {total_ms:9.1f} ms/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
