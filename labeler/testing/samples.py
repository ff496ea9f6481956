"""Sample images made on the spot: for the demo, tests and benchmarks (no data download)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Sizes chosen to cover wide, tall, square and odd-sized inputs (box mapping differs for each).
SAMPLE_SIZES = [(640, 480), (480, 640), (512, 512), (800, 300), (301, 457), (1024, 576)]
SAMPLE_FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A smooth background with a few filled shapes: compresses like a photo, varies by seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 256, 3)
    grad = (x / max(width, 1) * rng.integers(-120, 120) + y / max(height, 1) * rng.integers(-120, 120))
    pixels = np.clip(base[None, None, :] + grad[..., None], 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):
        x0, y0 = rng.integers(0, width - 10), rng.integers(0, height - 10)
        x1, y1 = x0 + rng.integers(10, max(11, width // 2)), y0 + rng.integers(10, max(11, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return img


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Uniform RGB noise: as different from `gradient_image` as an image can be."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient_image(width: int, height: int) -> Image.Image:
    """A smooth left-to-right grey ramp."""
    row = np.linspace(0, 255, width, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(row, (height, 1))] * 3, axis=-1))


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_sample_images(folder: str | Path, count: int = 12, bad: bool = True) -> list[Path]:
    """Write `count` good images in every supported format (one with an EXIF rotation), and
    with `bad`, three bad files: truncated JPEG, zero bytes, text named .png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        width, height = SAMPLE_SIZES[i % len(SAMPLE_SIZES)]
        fmt = SAMPLE_FORMATS[i % len(SAMPLE_FORMATS)]
        img = synthetic_image(width, height, seed=i)
        path = folder / f"sample_{i:03d}.{EXTENSIONS[fmt]}"
        if fmt == "JPEG" and i == 0:
            exif = Image.Exif()
            exif[0x0112] = 6  # "rotate 90 CW to display": stored 640x480, shown 480x640
            img.save(path, fmt, exif=exif)
        else:
            img.save(path, fmt)
        written.append(path)
    if bad:
        good_jpeg = jpeg_bytes(synthetic_image(320, 240, seed=999))
        (folder / "bad_truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
        (folder / "bad_empty.png").write_bytes(b"")
        (folder / "bad_not_an_image.png").write_bytes(b"this is a text file, not a PNG\n")
        written += [folder / "bad_truncated.jpg", folder / "bad_empty.png",
                    folder / "bad_not_an_image.png"]
    return written
