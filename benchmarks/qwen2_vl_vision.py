"""Qwen2-VL's vision tower: transformers' attention image by image against ours by runs of
equal-size images (labeler/models/qwen2_vl_attention.py).

Builds the vision tower of Qwen2-VL-2B (32 blocks) with random weights and times one forward
over a batch of equal-size images both ways (448x448, 1,024 patches each, with `--full`), with
the attention calls each made and the largest difference between their outputs.

    OMP_NUM_THREADS=1 PYTHONPATH=. python3 benchmarks/qwen2_vl_vision.py  # CPU: narrow
    PYTHONPATH=. python3 benchmarks/qwen2_vl_vision.py --full  # the 2B's widths, on a GPU

On CPU the default keeps the 2B's depth but narrows the widths (embed_dim 16, one head) and
the images (56x56, 16 patches), so that compute is small and the figure is mostly what
every forward costs the host: Python, dispatch, and the per-image split and calls, which do
not grow with the image. A GPU pays that cost too, kernel launches on top, while the device
waits for the host to issue the work.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from labeler.testing.attention_calls import CountAttentionCalls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import QWEN_2B  # noqa: E402  (the released 2B's configs)

FULL = QWEN_2B["vision"]  # Qwen/Qwen2-VL-2B-Instruct's vision tower
NARROW = dict(FULL, embed_dim=16, num_heads=1, hidden_size=32)


def vision_tower(full: bool, device: torch.device, dtype: torch.dtype):
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    config = Qwen2VLVisionConfig(**(FULL if full else NARROW))
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2VisionTransformerPretrainedModel(config).to(dtype).eval()


def time_forward(tower, pixels, grid, repeats: int, device: torch.device):
    """(median seconds of a forward, attention calls in one, its output: last hidden state
    and merged features)."""
    seconds = []
    with torch.inference_mode():
        out = tower(pixels, grid_thw=grid)  # warm-up
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            tower(pixels, grid_thw=grid)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        with CountAttentionCalls() as counter:
            tower(pixels, grid_thw=grid)
    return statistics.median(seconds), counter.calls, out


def main(argv: list[str] | None = None) -> int:
    from labeler.models.qwen2_vl_attention import batch_vision_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="the 2B's widths, in bf16 on a GPU (float32 on CPU)")
    parser.add_argument("--images", type=int, default=128, help="images in the batch")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the square images in pixels, a multiple of 28 (default "
                             "448 with --full, else 56: at 112 the narrow model's own compute "
                             "varied by a third between runs here)")
    parser.add_argument("--mixed", action="store_true",
                        help="alternate square images with 4:3 ones (side x 3/4 side), "
                             "whose segment lengths differ: the tower groups them by size "
                             "before its blocks")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards of each")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats take 1 or more")
    side = args.image_size or (448 if args.full else 56)
    if side < 28 or side % 28:
        parser.error(f"--image-size {side}: a multiple of 28 (two patches of 14 px)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    original = vision_tower(args.full, device, dtype)
    batched = copy.deepcopy(original)
    batch_vision_attention(batched)
    config = original.config
    channels = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
    cells = side // config.patch_size  # patches a side; one temporal patch an image
    # Square and 4:3 in turn: unequal segment lengths, each image its own run unless grouped
    # (a landscape and a portrait photo of one size have equal lengths: one run already).
    # 3/4 of the side, down to an even patch count (the 2x2 merge).
    short = max(2, cells * 3 // 4 // 2 * 2)
    if args.mixed and short == cells:
        parser.error("--mixed needs --image-size 56 or more (a 4:3 grid of even sides)")
    shapes = [(1, cells, cells), (1, short, cells)] if args.mixed else [(1, cells, cells)]
    grid_rows = [shapes[i % len(shapes)] for i in range(args.images)]
    total = sum(t * h * w for t, h, w in grid_rows)
    patches = total / args.images  # on average
    pixels = torch.randn(total, channels, device=device, dtype=dtype)
    grid = torch.tensor(grid_rows, device=device)
    widths = "full" if args.full else "narrow"
    print(f"device={device} dtype={str(dtype).removeprefix('torch.')} widths={widths} "
          f"embed_dim={config.embed_dim} depth={config.depth} images={args.images} "
          f"size={side}x{side}{' mixed' if args.mixed else ''} grids={shapes} "
          f"patches/img={patches:g}", flush=True)
    figures = {}
    for name, tower in (("transformers", original), ("runs", batched)):
        seconds, calls, out = time_forward(tower, pixels, grid, args.repeats, device)
        figures[name] = (seconds, out)
        print(f"{name}: {seconds * 1e3:.1f} ms a forward ({seconds * 1e3 / args.images:.3f} ms "
              f"an image), attention calls {calls}", flush=True)
    ours, theirs = figures["runs"][1], figures["transformers"][1]
    difference = max((a.float() - b.float()).abs().max() for a, b in (
        (ours.last_hidden_state, theirs.last_hidden_state),
        (ours.pooler_output, theirs.pooler_output)))
    saved = figures["transformers"][0] - figures["runs"][0]
    print(f"RESULT qwen2_vl_vision widths={widths} images={args.images} size={side} "
          f"mixed={args.mixed} "
          f"transformers_ms={figures['transformers'][0] * 1e3:.1f} "
          f"runs_ms={figures['runs'][0] * 1e3:.1f} saved_ms/img={saved * 1e3 / args.images:.3f} "
          f"max_abs_diff={difference.item():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
