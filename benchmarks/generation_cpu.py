"""Batched generation vs one image at a time, on the tiny Florence-2 and Qwen2-VL (CPU).

Both paths run the project's adapter (preprocess, generate, postprocess) on the same
images with a fixed number of new tokens; the speed-up is images/s batched / images/s
one at a time.

    .venv/bin/python benchmarks/generation_cpu.py --images 64 --batch-size 16
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

from labeler.config import TaskSpec  # noqa: E402
from labeler.models.base import ImageInput  # noqa: E402
from labeler.registry import load_adapter_class  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from labeler.testing.samples import synthetic_image  # noqa: E402

CASES = [("caption", "florence2", {"prompt": "<CAPTION>"}), ("caption", "qwen2_vl", {})]


def images_per_second(adapter, images: list[ImageInput], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        adapter(images[i:i + batch_size])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "labeler-bench"))
    args = parser.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    torch.set_num_threads(args.threads)
    sizes = [(640, 480), (480, 640), (512, 512), (800, 300)]
    images = [np.asarray(synthetic_image(*sizes[i % 4], seed=i)) for i in range(args.images)]
    inputs = [ImageInput(im, im.shape[1], im.shape[0]) for im in images]
    for task, family, fields in CASES:
        model_dir = Path(args.workdir) / f"tiny-{family}"
        if not (model_dir / "config.json").exists():
            build_tiny_model(family, model_dir)
        # min_new_tokens = max_new_tokens: every image generates exactly this many tokens,
        # so both paths do the same decoding work whatever the random model would emit.
        spec = TaskSpec(task=task, model={"family": family, "source": str(model_dir)},
                        generation={"max_new_tokens": args.new_tokens}, **fields)
        adapter = load_adapter_class(task, family)(spec)
        adapter.setup(torch.device("cpu"))
        adapter.model.generation_config.min_new_tokens = args.new_tokens
        adapter(inputs[:2])  # warm-up
        single = images_per_second(adapter, inputs, 1)
        batched = images_per_second(adapter, inputs, args.batch_size)
        print(f"{family} {task}: one at a time {single:.1f} images/s, batch {args.batch_size} "
              f"{batched:.1f} images/s, speed-up {batched / single:.1f}x "
              f"({args.new_tokens} new tokens, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
