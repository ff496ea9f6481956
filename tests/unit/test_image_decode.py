"""Decoding: orientation, modes, limits and readable errors for bad bytes."""

import io

import numpy as np
import pytest
from PIL import Image

from labeler.media.image import MediaError, decode_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied_and_size_is_the_oriented_one():
    # Left half red, right half blue, stored 40x20; orientation 6 shows it rotated 90° CW.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_encode(Image.fromarray(pixels), "PNG", exif=exif), 10**6)
    assert (out.width, out.height) == (20, 40)
    assert out.pixels.shape == (40, 20, 3)
    assert tuple(out.pixels[2, 10]) == (255, 0, 0)  # the left half is now on top
    assert tuple(out.pixels[37, 10]) == (0, 0, 255)


# Where the stored top-left pixel is shown, per EXIF orientation: (row, column), 0 = first,
# 1 = last. 5-8 swap width and height; 2, 4, 5 and 7 are mirrored.
SHOWN_CORNER = {1: (0, 0), 2: (0, 1), 3: (1, 1), 4: (1, 0), 5: (0, 0), 6: (0, 1), 7: (1, 1),
                8: (1, 0)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:4, :4] = (255, 0, 0)  # a red mark on the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(_encode(Image.fromarray(stored), "PNG", exif=exif), 10**6)
    width, height = (20, 40) if orientation >= 5 else (40, 20)
    assert (out.width, out.height) == (width, height)
    assert out.pixels.shape == (height, width, 3)
    row, column = SHOWN_CORNER[orientation]
    assert tuple(out.pixels[row * (height - 1), column * (width - 1)]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (16, 8), (10, 200, 30)).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = decode_image(_encode(img, fmt), 10**6)
    assert out.pixels.shape == (8, 16, 3) and out.pixels.dtype == np.uint8


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = decode_image(_encode(img, "PNG"), 10**6)
    assert (out.pixels == 255).all()


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), 10**6)
    assert out.pixels[0, 0, 0] > 200 and out.pixels[0, 0, 1] < 50


def test_pixel_limit_is_checked_before_decoding():
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(MediaError, match="300x200 = 60000 pixels, over the limit of 59999"):
        decode_image(data, max_pixels=59_999)
    assert decode_image(data, max_pixels=60_000).width == 300


@pytest.mark.parametrize("data, says", [
    (b"", "empty file"),
    (b"hello, not an image", "not a recognised image format"),
])
def test_bad_bytes_give_reasons(data, says):
    with pytest.raises(MediaError, match=says):
        decode_image(data, 10**6)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_a_truncated_image_is_an_error_not_a_partial_image(kind):
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)), kind)
    # Cut inside the pixel data: a PNG's EXIF lookup reads to the end of the file too. WebP
    # decodes when opened, so its error is about the header.
    says = "unreadable image header" if kind == "WEBP" else "corrupt image data"
    for cut in (len(data) // 2, len(data) * 3 // 4):
        with pytest.raises(MediaError, match=says):
            decode_image(data[:cut], 10**6)


def test_reduce_on_load_keeps_the_long_side_and_reports_full_size():
    data = _encode(Image.new("RGB", (4000, 3000), (90, 90, 90)), "JPEG")
    out = decode_image(data, 10**8, decode_min_side=960)
    assert (out.width, out.height) == (4000, 3000)
    assert out.pixels.shape == (750, 1000, 3)  # 1/4 scale: the largest with long side >= 960
    full = decode_image(data, 10**8, decode_min_side=None)
    assert full.pixels.shape == (3000, 4000, 3)
    # An MPO (a JPEG with a second picture after it, as many cameras write) alike.
    mpo = _encode(Image.new("RGB", (4000, 3000), (90, 90, 90)), "MPO", save_all=True,
                  append_images=[Image.new("RGB", (400, 300))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    out = decode_image(mpo, 10**8, decode_min_side=960)
    assert (out.width, out.height) == (4000, 3000) and out.pixels.shape == (750, 1000, 3)


def test_sixteen_bit_grey_keeps_its_brightness_and_key_colour_transparency_is_white():
    """65535 is white as 255 is: a uniform mid grey stays mid grey (it became white when
    scaled by its own brightest pixel), and one saturated pixel darkens nothing."""
    grey = np.full((4, 6), 32768, np.uint16)
    out = decode_image(_encode(Image.fromarray(grey), "PNG"), 10**6)
    assert (out.pixels == 128).all()
    grey[0, 0] = 65535
    out = decode_image(_encode(Image.fromarray(grey), "PNG"), 10**6)
    assert out.pixels[0, 0, 0] == 255 and (out.pixels[1:] == 128).all()
    # An RGB PNG whose transparency is a key colour (tRNS): those pixels become white.
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (200, 10, 10)
    out = decode_image(_encode(Image.fromarray(rgb), "PNG", transparency=(0, 0, 0)), 10**6)
    assert (out.pixels[2:] == 255).all() and tuple(out.pixels[0, 0]) == (200, 10, 10)


def _halves() -> np.ndarray:
    """Stored 40x20: left half red, right half blue (kept apart by lossy codecs)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    return pixels


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_phone_and_web_formats_decode_oriented_once(fmt):
    """HEIC (pillow-heif's opener; it stores EXIF orientation 6 as the file's own rotation)
    and AVIF (Pillow's plugin; EXIF orientation kept) show the image rotated 90° CW, as the
    PNG above: once, not twice."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(_halves()), fmt, exif=exif.tobytes(), quality=90)
    out = decode_image(data, 10**6)
    assert (out.width, out.height) == (20, 40) and out.pixels.shape == (40, 20, 3)
    top, bottom = out.pixels[2, 10].astype(int), out.pixels[37, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_heic_limits_and_damage_are_reasons():
    data = _encode(Image.fromarray(_halves()), "HEIF", quality=90)
    with pytest.raises(MediaError, match="40x20 = 800 pixels, over the limit of 799"):
        decode_image(data, max_pixels=799)
    rng = np.random.default_rng(0)  # noise: a file long enough to be cut after its header
    data = _encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)), "HEIF")
    with pytest.raises(MediaError, match=r"^corrupt image data: .*Unexpected end of file.*\)$"):
        decode_image(data[: len(data) // 2], 10**6)  # libheif's trailing newline stripped


def test_without_pillow_heif_a_heic_says_what_to_install(tmp_path):
    """In a process where pillow-heif cannot be imported (the GPU benchmark machine's), the
    module still imports, and a HEIC becomes an error naming the package; other images
    decode as before."""
    import subprocess
    import sys

    heic = tmp_path / "a.heic"
    heic.write_bytes(_encode(Image.fromarray(_halves()), "HEIF", quality=90))
    png = tmp_path / "a.png"
    png.write_bytes(_encode(Image.fromarray(_halves()), "PNG"))
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"  # makes `import pillow_heif` fail
        "from labeler.media.image import HEIF_READABLE, MediaError, decode_image\n"
        "assert not HEIF_READABLE\n"
        f"print(decode_image(open({str(png)!r}, 'rb').read(), 10**6).width)\n"
        "try:\n"
        f"    decode_image(open({str(heic)!r}, 'rb').read(), 10**6)\n"
        "except MediaError as err:\n"
        "    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        "40", "a HEIC / HEIF image, and pillow-heif, which reads them, is not installed: "
              "pip install pillow-heif"]


def test_postscript_is_never_opened(monkeypatch):
    """Pillow opens EPS and renders it by running Ghostscript (`gs`) on the bytes: a
    PostScript program from any input or HTTP caller. It is refused like any non-image, and
    no subprocess starts."""
    import subprocess

    from labeler.media.image import MediaError, decode_image

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(subprocess, "check_call", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
           b"0 0 moveto 10 10 lineto stroke\nshowpage\n")
    with pytest.raises(MediaError, match="not a recognised image format"):
        decode_image(eps, 1_000_000)


def test_reduce_on_load_shrinks_formats_pillow_cannot_draft():
    """A PNG (or WebP, TIFF...) is decoded whole, then reduced by the largest whole factor
    that keeps decode_min_side, as a JPEG's draft is: a 30-megapixel PNG through OWLv2's
    processor on CPU took 5.2 s and 3.6 GB more in one decode task at full size."""
    data = _encode(Image.new("RGB", (4000, 3000), (90, 90, 90)), "PNG")
    out = decode_image(data, 10**8, decode_min_side=960)
    assert (out.width, out.height) == (4000, 3000)
    assert out.pixels.shape == (750, 1000, 3)  # 1/4: the long side stays >= 960
    assert decode_image(data, 10**8, decode_min_side=None).pixels.shape == (3000, 4000, 3)
    small = _encode(Image.new("RGB", (1500, 900), (90, 90, 90)), "PNG")
    assert decode_image(small, 10**8, decode_min_side=960).pixels.shape == (900, 1500, 3)


def test_truncated_files_share_one_reason():
    """Pillow names the bytes a truncated file left unprocessed, a count of its own per
    file: the reason leaves it out, so an error storm groups into a few reasons."""
    rng = np.random.default_rng(0)
    data = _encode(Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)), "JPEG")
    reasons = set()
    for cut in (700, 1500, 4000, 9000):
        with pytest.raises(MediaError) as err:
            decode_image(data[:cut], 10**6)
        reasons.add(str(err.value))
    assert reasons == {"corrupt image data: image file is truncated"}
