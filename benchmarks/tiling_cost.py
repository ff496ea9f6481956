"""What tiles (spec.tiles) cost per image on the CPU side, for OWLv2 B/16's 960 px input.

For a 12-megapixel photo (4000x3000 JPEG, a drone or phone camera) and a 720p frame, and
for no tiles, 2x2 and 3x3 (overlap 0.2, with the whole image), prints:
  decode    the JPEG side decode_side_for_tasks asks for, and the decoded size
  cpu stage decode + cutting + the fast canvas of every window, CPU ms per image on 1 core
            (the job's decode tasks), and the MB each row carries to the model actor
  merge     postprocess of the image's windows (boxes to pixels, threshold, merge_windows)
            on a tiny network's outputs, ms per image, and the boxes before and after merge
The forward passes are the rest: T = columns x rows + 1 inputs per image, so a tiled image
costs T times the model time of an untiled one (docs/benchmarks.md turns that into images/s).

The network is the 960 px tiny OWLv2 of benchmarks/owlv2_cpu.py (spread class scores, the
threshold keeping 1% of the boxes, ~36 an image untiled), so box counts are realistic.

    .venv/bin/python benchmarks/tiling_cost.py
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from labeler.config import TaskSpec, decode_side_for_tasks  # noqa: E402
from labeler.media.image import decode_image  # noqa: E402
from labeler.models.base import ImageInput  # noqa: E402
from labeler.models.owlv2 import Owlv2Detector  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from owlv2_cpu import (KEPT_FRACTION, LABELS, make_jpegs, spread_class_scores,  # noqa: E402
                       threshold_keeping)

GRIDS = [None, (2, 2), (3, 3)]
OVERLAP = 0.2


def detector(model_dir: str, grid, threshold: float) -> Owlv2Detector:
    tiles = {"grid": grid, "overlap": OVERLAP} if grid else None
    adapter = Owlv2Detector(TaskSpec(task="detect", model={"family": "owlv2", "source": model_dir},
                                     labels=LABELS, threshold=threshold, preprocess="fast",
                                     tiles=tiles))
    adapter.setup(torch.device("cpu"))
    return adapter


def cpu_stage_ms(adapter: Owlv2Detector, data: bytes, side: int, reps: int) -> tuple[float, object]:
    """Decode at `side` and the adapter's cpu_transform, ms per image (median of reps)."""
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        decoded = decode_image(data, 10**9, side)
        canvas = adapter.cpu_transform(decoded.pixels)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[1:])), (decoded, canvas)


def postprocess_ms(adapter: Owlv2Detector, decoded, canvas: np.ndarray, reps: int):
    """postprocess (with the merge) of one image's windows: ms, boxes before/after merge."""
    image = ImageInput(canvas, decoded.width, decoded.height)
    with torch.inference_mode():
        raw = adapter.predict(adapter.preprocess([image]))
        times = []
        for _ in range(reps + 1):
            start = time.perf_counter()
            (out,) = adapter.postprocess(raw, [image])
            times.append((time.perf_counter() - start) * 1000)
        best = torch.sigmoid(raw["logits"].float().max(dim=-1).values)
        before = int((best > adapter.spec.threshold).sum())
    return float(np.median(times[1:])), before, len(out["detections"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "labeler-bench"))
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    torch.set_num_threads(1)
    tmp = Path(args.workdir)
    model_dir = str(tmp / "owlv2-960-w32-spread")
    if not Path(model_dir, "config.json").exists():
        build_tiny_model("owlv2", model_dir, image_size=960, vision_heads=1, vision_width=32)
        spread_class_scores(model_dir)
    threshold = threshold_keeping(model_dir, make_jpegs(tmp / "jpeg720", 48), KEPT_FRACTION)
    print(f"threshold: {threshold:.4f} (keeps {KEPT_FRACTION:.0%} of the boxes of 48 images)")
    for size, count in [((4000, 3000), 4), ((1280, 720), 8)]:
        datas = [p.read_bytes() for p in make_jpegs(tmp / f"tiles_{size[0]}", count, size)]
        for grid in GRIDS:
            adapter = detector(model_dir, grid, threshold)
            side = decode_side_for_tasks(1008, [adapter.spec])
            stage, post, before, after = [], [], [], []
            for data in datas:
                ms, (decoded, canvas) = cpu_stage_ms(adapter, data, side, args.reps)
                post_ms, n_before, n_after = postprocess_ms(adapter, decoded, canvas, args.reps)
                stage.append(ms)
                post.append(post_ms)
                before.append(n_before)
                after.append(n_after)
            name = f"{grid[0]}x{grid[1]}" if grid else "none"
            print(f"{size[0]}x{size[1]} tiles={name}: {adapter.inputs_per_image} model inputs; "
                  f"decode side {side} -> {decoded.pixels.shape[1]}x{decoded.pixels.shape[0]}; "
                  f"cpu stage {np.mean(stage):.1f} ms/image (1 core), row "
                  f"{canvas.nbytes / 1e6:.1f} MB; postprocess {np.mean(post):.2f} ms/image; "
                  f"boxes per image {np.mean(before):.0f} -> {np.mean(after):.0f} merged "
                  f"({count} images)")

if __name__ == "__main__":
    main()
