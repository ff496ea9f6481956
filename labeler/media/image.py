"""Image bytes -> RGB uint8 array, as the image is meant to be seen.

Rules: EXIF orientation applied; every mode (P, LA, CMYK, I;16, ...) converted to RGB;
the first frame of animations; the pixel count checked from the header, before any pixel
is decoded, so a decompression bomb costs nothing.

Formats: what Pillow reads (JPEG, PNG, WebP, AVIF, GIF, TIFF, BMP, ...) and HEIC / HEIF,
the format of phone photos, through pillow-heif's opener. pillow-heif applies a HEIF
file's own rotation and mirroring on open and then reports EXIF orientation 1, so the
image is oriented once, as the phone shows it.
"""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
try:
    from pillow_heif import register_heif_opener
except ImportError:  # a dependency; only an environment put together by hand lacks it
    HEIF_READABLE = False
else:
    register_heif_opener()
    HEIF_READABLE = True

# ISO base media "ftyp" brands of HEIF still images (HEIC from phones, and the generic ones).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")

# Our own limit (InputSpec.max_pixels) replaces Pillow's global one, which would warn or
# raise with a less useful message and cannot differ between jobs in one process.
Image.MAX_IMAGE_PIXELS = None

# Pillow formats never opened: EPS is PostScript, a program that Pillow renders by running
# Ghostscript on it (a subprocess, wherever `gs` is installed), on bytes from any input or
# HTTP caller.
_REFUSED_FORMATS = frozenset({"EPS"})


@functools.cache
def _readable_formats() -> tuple[str, ...]:
    """Every format Pillow (and pillow-heif) opens, less _REFUSED_FORMATS."""
    Image.init()
    return tuple(f for f in Image.OPEN if f not in _REFUSED_FORMATS)


# EXIF orientations 5-8 swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


_BYTES_NOT_PROCESSED = re.compile(r" \(\d+ bytes not processed\)")


# The shortest side decode_min_side's reduction of a non-JPEG leaves.
REDUCED_SHORT_SIDE = 32


class MediaError(ValueError):
    """Bytes that cannot become an image; the message is the reason stored in the error row."""


@dataclass(frozen=True)
class DecodedImage:
    """pixels: (h, w, 3) uint8 RGB, possibly reduced on load; width/height: the full
    oriented size in pixels, which every box refers to."""

    pixels: np.ndarray
    width: int
    height: int


def _draft_request(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size to ask Pillow's draft for so that the long side stays >= min_side."""
    scale = min(1.0, min_side / max(width, height))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def header_pixels(data: bytes) -> int | None:
    """Width x height from an image's header, without decoding it (about 0.1 ms); None when
    the bytes are not an image decode_image would open (it then says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=_readable_formats()) as img:
            return img.size[0] * img.size[1]
    except Exception:  # noqa: BLE001 - decode_image names the reason
        return None


def decode_image(data: bytes, max_pixels: int, decode_min_side: int | None = None) -> DecodedImage:
    """Decode encoded image bytes.

    max_pixels: images with more pixels than this raise MediaError.
    decode_min_side: if set, images are decoded at a reduced scale whose long side is still
        >= this many pixels (the stored width/height stay the full size).
    """
    if not data:
        raise MediaError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=_readable_formats())
    except UnidentifiedImageError:
        if not HEIF_READABLE and data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
            raise MediaError("a HEIC / HEIF image, and pillow-heif, which reads them, is not "
                             "installed: pip install pillow-heif") from None
        raise MediaError("not a recognised image format") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise MediaError(f"unreadable image header: {str(err).strip()}") from None

    raw_w, raw_h = img.size
    raw_format = img.format
    if raw_w * raw_h > max_pixels:
        raise MediaError(
            f"image has {raw_w}x{raw_h} = {raw_w * raw_h} pixels, over the limit of {max_pixels}"
        )
    try:
        # A PNG's EXIF may follow its image data: reading it loads the image, which for a
        # truncated file fails here.
        orientation = img.getexif().get(0x0112, 1)
        width, height = ((raw_h, raw_w) if orientation in _TRANSPOSED_ORIENTATIONS
                         else (raw_w, raw_h))
        # MPO: a JPEG with more pictures after it (many cameras' files), decoded alike.
        if decode_min_side and img.format in ("JPEG", "MPO"):
            img.draft("RGB", _draft_request(raw_w, raw_h, decode_min_side))
        img.load()
        if orientation != 1:  # exif_transpose copies even an upright image (0.5 ms at 720p)
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if decode_min_side and raw_format not in ("JPEG", "MPO"):
            # Formats Pillow cannot draft (PNG, WebP, TIFF, HEIC...) decode whole; shrink them
            # at once by the largest whole factor that keeps decode_min_side, as a JPEG's
            # draft does, so that no later stage (a processor's float copies) works on every
            # pixel of a 50-megapixel PNG.
            # A strip keeps REDUCED_SHORT_SIDE across (a 20000x20 one is not reduced to
            # nothing; the tasks' own refusals judge it at its size).
            factor = min(max(img.size) // decode_min_side, min(img.size) // REDUCED_SHORT_SIDE)
            if factor >= 2:
                img = img.reduce(factor)
        pixels = np.asarray(img)
    except MediaError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated data surfaces as OSError, SyntaxError...
        # Pillow's "image file is truncated (N bytes not processed)": the count differs from
        # file to file, which would make every truncated file a reason of its own.
        reason = _BYTES_NOT_PROCESSED.sub("", str(err).strip())
        raise MediaError(f"corrupt image data: {reason}") from None
    return DecodedImage(pixels=pixels, width=width, height=height)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparent pixels become white, not black garbage (an alpha
    channel, a palette's or a PNG key colour's transparency). 16-bit greyscale keeps its
    brightness: 65535 is white, as 255 is in 8 bits."""
    if img.mode == "P" or "transparency" in img.info:  # a key colour (tRNS) is transparency
        img = img.convert("RGBA")
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (Pillow opens some as 32-bit "I"): 0..65535 to 0..255. Values
        # past 16 bits (a 32-bit image of no stated range) scale by the image's own peak.
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, None)
        peak = max(65535.0, float(arr.max()) if arr.size else 0.0)
        return Image.fromarray(np.rint(arr / peak * 255.0).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")
