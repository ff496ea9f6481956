"""Drawing a row's annotations on its image, scaled down for a page.

Coordinates: boxes and OCR quads are float pixels of the full oriented image (width x
height, as the row stores them). The image drawn on is that image scaled so that its long
side is at most `max_side` pixels (never up): every coordinate is multiplied by the same
per-axis factor (drawn size / full size). Pixels given at another size (a JPEG reduced on
load, labeler.media.image) are resized to the drawn size first.

Colors: a box's color is chosen from its label by a hash (the same label has the same color
on every page and run); OCR lines are outlined in OCR_COLOR. Line width and text size grow
with the drawn image's long side, so the marks look alike on small and large images.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from labeler.export.rows import Box
from labeler.preview.sample import OcrLine

# Long side of a drawn image, pixels.
MAX_SIDE = 1024
# Long side per pixel of line width (1024 px: 3 px lines) and per pixel of text height.
PIXELS_PER_LINE = 320
PIXELS_PER_TEXT = 64
MIN_TEXT = 10  # smallest text size, pixels
OCR_COLOR = (255, 0, 255)
# JPEG quality, and no chroma subsampling: thin colored lines and text keep their color.
JPEG_QUALITY = 88
# The label shown for a box with an empty label (a class-agnostic region proposal).
UNNAMED_LABEL = "object"

RGB = tuple[int, int, int]


def label_color(label: str) -> RGB:
    """A saturated, bright color for `label`, the same on every run (a hash of the text
    picks the hue)."""
    digest = hashlib.blake2b(label.encode(), digest_size=4).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536
    saturation = 0.65 + 0.35 * digest[2] / 255
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def text_color(background: RGB) -> RGB:
    """Black or white, whichever reads better on `background` (its luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def fit_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) scaled so that the long side is at most max_side, never up; >= 1."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def line_width(size: tuple[int, int]) -> int:
    """Line width in pixels for a drawn image of `size` (width, height)."""
    return max(1, round(max(size) / PIXELS_PER_LINE))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def font_for(size: tuple[int, int]):
    """The font for a drawn image of `size` (width, height)."""
    return _font(max(MIN_TEXT, round(max(size) / PIXELS_PER_TEXT)))


def box_caption(box: Box) -> str:
    """The text drawn above a box: label, track when it has one, and score ('dog 0.87',
    'dog #3 0.87')."""
    track = f" #{box.track_id}" if box.track_id is not None else ""
    return f"{box.label or UNNAMED_LABEL}{track} {box.score:.2f}"


def annotate(pixels: np.ndarray, width: int, height: int, boxes: Iterable[Box] = (),
             ocr: Iterable[OcrLine] = (), max_side: int = MAX_SIDE) -> Image.Image:
    """The image with its boxes and OCR lines drawn, at fit_size(width, height, max_side).

    pixels: (h, w, 3) uint8 RGB, the whole image at any size; width, height: the full size
    in pixels that boxes and quads refer to. Boxes are drawn weakest first, so the strongest
    are on top; each with its caption (box_caption) on a filled tag above it (inside it when
    there is no room above)."""
    size = fit_size(width, height, max_side)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    image = image.convert("RGB")
    sx, sy = size[0] / width, size[1] / height
    draw = ImageDraw.Draw(image)
    lw, font = line_width(size), font_for(size)
    for box in sorted(boxes, key=lambda b: b.score):
        color = label_color(box.label)
        x0, x1 = sorted((box.x0 * sx, box.x1 * sx))
        y0, y1 = sorted((box.y0 * sy, box.y1 * sy))
        draw.rectangle((x0, y0, x1, y1), outline=color, width=lw)
        _tag(draw, size[0], box_caption(box), (x0, y0), color, font, lw)
    for line in ocr:
        points = [(x * sx, y * sy) for x, y in line.quad]
        draw.polygon(points, outline=OCR_COLOR, width=lw)
        if line.text:
            top_left = min(points, key=lambda p: (p[1], p[0]))
            _tag(draw, size[0], line.text, top_left, OCR_COLOR, font, lw)
    return image


def _tag(draw: ImageDraw.ImageDraw, image_width: int, text: str, corner: tuple[float, float],
         color: RGB, font, lw: int) -> None:
    """`text` on a `color` rectangle whose bottom-left is at `corner` (x, y), or whose
    top-left is just inside it when the text would leave the image at the top; moved left
    when it would leave it at the right."""
    try:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    except UnicodeEncodeError:  # the bitmap font (Pillow without FreeType) is Latin-1 only
        text = text.encode("ascii", "replace").decode()
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, lw)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = corner
    y = y - h if y - h >= 0 else y + lw
    x = max(0.0, min(x, image_width - w))
    draw.rectangle((x, y, x + w, y + h), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=text_color(color), font=font)


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """The drawn image encoded as a JPEG (4:4:4)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()
