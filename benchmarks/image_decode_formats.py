"""What an image costs the decode stage, by format: CPU ms per image of
labeler.media.image.decode_image (EXIF orientation, RGB, the pixel limit) on one core.

A 12-megapixel phone photo (4032x3024) and a 1280x720 frame, both the same synthetic scene
with a little noise (NOISE: so they compress like photos), saved as JPEG (quality 90), HEIC
(quality 60, a phone's file size), AVIF (quality 80), WebP (quality 90) and PNG. JPEG is
timed twice, as every format is: full decode, and reduced on load to a long side of at least
1008 (the job's default `decode_min_side`: JPEG is decoded at a reduced scale, the others are
decoded whole, then reduced), with the pixels the stage hands on. CPU time is the process's
(time.process_time), so threads a decoder starts are counted; wall time is printed beside.

    .venv/bin/python benchmarks/image_decode_formats.py [--reps 10]
"""

from __future__ import annotations

import argparse
import io
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from labeler.config import InputSpec
from labeler.media.image import decode_image
from labeler.testing.samples import synthetic_image

SIZES = ((4032, 3024), (1280, 720))
# HEIF quality 60: a 12 MP file of ~1.9 MB, an iPhone's size (x265's bitrate, and so its
# decode time, climbs steeply above: 4.3 MB at 70).
FORMATS = (("JPEG", {"quality": 90}), ("HEIF", {"quality": 60}), ("AVIF", {"quality": 80}),
           ("WEBP", {"quality": 90}), ("PNG", {}))
MAX_PIXELS = InputSpec.model_fields["max_pixels"].default
DECODE_MIN_SIDE = InputSpec.model_fields["decode_min_side"].default
# Sensor-like noise, +-3 levels: the 12 MP JPEG is then ~3 MB, as a phone's is (+-20, the
# CPU benchmark's, makes a 10 MB HEIC that decodes 5x slower than a phone's).
NOISE = 3


def photo(width: int, height: int) -> Image.Image:
    img = np.asarray(synthetic_image(width, height, seed=0)).astype(np.int16)
    noise = np.random.default_rng(0).integers(-NOISE, NOISE + 1, img.shape)
    return Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8))


def timed(data: bytes, reps: int, min_side: int | None) -> tuple[float, float]:
    """(CPU ms, wall ms) per decode, after one warm-up."""
    decode_image(data, MAX_PIXELS, min_side)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(reps):
        decode_image(data, MAX_PIXELS, min_side)
    return ((time.process_time() - cpu) / reps * 1000, (time.perf_counter() - wall) / reps * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    for width, height in SIZES:
        image = photo(width, height)
        for fmt, options in FORMATS:
            buffer = io.BytesIO()
            image.save(buffer, fmt, **options)
            data = buffer.getvalue()
            for min_side, how in ((None, "full"),
                                  (DECODE_MIN_SIDE, f"reduced to >= {DECODE_MIN_SIDE}")):
                cpu, wall = timed(data, args.reps, min_side)
                h, w = decode_image(data, MAX_PIXELS, min_side).pixels.shape[:2]
                print(f"  {width}x{height} {fmt:<4} {len(data) / 1e6:6.2f} MB, {how:<18}: "
                      f"{cpu:7.1f} CPU-ms, {wall:7.1f} wall-ms per image, {w}x{h} handed on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
