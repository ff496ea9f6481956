"""The image files of an export: their names under `images/`, their bytes, and the copying.

Names. An image is written to `images/<key><suffix>`, its YOLO label to
`labels/<key>.txt`, where key is the row id as a relative path (sub-folders kept; empty,
`.` and `..` parts dropped) without its image suffix. Ultralytics finds an image's label by
replacing the last `/images/` of its path with `/labels/`, so a folder of the id named
`images` is written `images_`. An id without one of Ultralytics' image suffixes (a WebDataset
key `shard.tar/k1`, a manifest key) gets the suffix of the written format. Two ids that
differ only in their image suffix (`a.jpg`, `a.png`) would share one YOLO label file (in one
split) or one slice name: the second is not exported (a failure with its reason); a COCO copy
writes both. To know, the copy keeps an 8-byte digest of each name: about 100 bytes per image
in Python, the only state that grows with the images.

Bytes. Boxes, `width` and `height` refer to the image as its EXIF orientation shows it
(labeler.media.image). Bytes without an orientation other than 1, in a format Ultralytics
reads (COPIED_FORMATS), are copied unchanged. Otherwise the pixels the model was given
(decode_image at full size: orientation applied, RGB) are re-encoded: JPEG at quality
JPEG_QUALITY for a JPEG, the source's format when lossless or losslessly writable, PNG for
formats Ultralytics does not read (GIF...). Re-encoded files carry no EXIF, so no reader
rotates them a second time. The written image must have the row's width and height, else the
source changed since the job and the row is not exported.

Slices (`--slice`, labeler.export.slices) are cut from the pixels the model was given
(decode_image at full size) and encoded: JPEG at JPEG_QUALITY for lossy sources (JPEG,
HEIC, AVIF, lossy WebP), PNG otherwise, as `<folder>/<key>_<x0>_<y0>_<x1>_<y1><suffix>`.

Copies (read with labeler.storage.read_bytes: local files, s3:// objects, tar members and
manifest cells) run on COPY_THREADS threads; results come back in row order, at most
IN_FLIGHT images held at once.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

from PIL import Image

from labeler.config import InputSpec
from labeler.export.rows import Reasons, Row
from labeler.export.slices import SliceOptions, slice_row, slice_windows
from labeler.export.target import Target
from labeler.media.image import MediaError, decode_image
from labeler.storage import read_bytes

# The suffixes Ultralytics lists as images (its IMG_FORMATS); any other file is not read.
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff",
                            ".webp", ".pfm", ".heic"})
# Pillow formats whose bytes are copied as they are (Ultralytics checks the format it reads
# against IMG_FORMATS), with the suffix an id without one gets.
COPIED_FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp",
                  "BMP": ".bmp", "TIFF": ".tif", "HEIF": ".heic"}
EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 is "as stored", 2-8 flip and/or rotate
# Lossy re-encoding of oriented JPEGs: 95 keeps the artefacts of a second encoding below
# those of the first at common camera qualities (85-95).
JPEG_QUALITY = 95
# Parallel copies: S3 requests take tens of ms each, and 8 in flight keep a link busy with
# photo-sized images; 2 x 8 pending results bound the images in memory.
COPY_THREADS = 8
IN_FLIGHT = 2 * COPY_THREADS
# A sub-folder named like this would end Ultralytics' /images/ -> /labels/ replacement early.
_RESERVED_FOLDER = "images"


class ImageCopyError(Exception):
    """A row whose image cannot be exported; the message is the reason."""


def relative_parts(row_id: str) -> list[str] | None:
    """An id (a manifest's or a tar's: user data) as the parts of a path relative to an
    export's output: its empty, `.` and `..` parts dropped, so `../../x` or `/etc/x` cannot
    write outside it; None when nothing is left or it holds a NUL (no file system takes
    one)."""
    parts = [p for p in row_id.split("/") if p not in ("", ".", "..")]
    return parts if parts and "\0" not in row_id else None


@dataclass(frozen=True)
class ImageName:
    """key: the id as a relative path without its image suffix; suffix: that suffix as the
    id has it ('.JPG'), or None when the id has none (the written format's is added)."""

    key: str
    suffix: str | None

    @classmethod
    def of(cls, row_id: str) -> "ImageName":
        parts = relative_parts(row_id)
        if parts is None:
            raise ImageCopyError(f"the id {row_id!r} gives no file name")
        folders = [f"{p}_" if p == _RESERVED_FOLDER else p for p in parts[:-1]]
        suffix = PurePosixPath(parts[-1]).suffix
        if suffix.lower() not in IMAGE_SUFFIXES:
            return cls("/".join([*folders, parts[-1]]), None)
        return cls("/".join([*folders, parts[-1][:-len(suffix)]]), suffix)


@dataclass(frozen=True)
class ImageFile:
    """An image written by the export: path relative to the output ('images/a/b.jpg'), its
    name, and the folder it was written into ('images')."""

    path: str
    name: ImageName
    folder: str = "images"


def image_bytes(data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """Encoded image -> (bytes to write, their suffix, (width, height) as shown), see the
    module docstring; ImageCopyError when the bytes are no image Pillow reads."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise ImageCopyError(f"not an image Pillow reads: {err}") from None
    if fmt in COPIED_FORMATS and orientation not in range(2, 9):
        return data, COPIED_FORMATS[fmt], size
    try:
        decoded = decode_image(data, max_pixels=size[0] * size[1])  # the job checked the limit
    except MediaError as err:
        raise ImageCopyError(str(err)) from None
    out_format = {"JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP", "TIFF": "TIFF",
                  "BMP": "BMP"}.get(fmt, "PNG")
    # WebP losslessly: a re-encoding adds no loss to a lossless source.
    options = {"JPEG": {"quality": JPEG_QUALITY}, "WEBP": {"lossless": True}}.get(out_format, {})
    buffer = io.BytesIO()
    Image.fromarray(decoded.pixels).save(buffer, out_format, **options)
    suffix = COPIED_FORMATS.get(out_format, ".png")
    return buffer.getvalue(), suffix, (decoded.width, decoded.height)


def copy_image(row: Row, name: ImageName, target: Target, folder: str = "images") -> ImageFile:
    """Read the row's image, write it to <folder>/<name> of `target`; ImageCopyError with the
    reason when the image cannot be read or no longer matches the row."""
    out, suffix, size = image_bytes(_source_bytes(row))
    _check_labeled_size(size, row)
    path = f"{folder}/{name.key}{name.suffix or suffix}"
    target.write(path, out)
    return ImageFile(path, name, folder)


def _source_bytes(row: Row) -> bytes:
    """The bytes of the row's image; ImageCopyError saying why they cannot be read."""
    try:
        return read_bytes(row.uri)
    except OSError as err:
        raise ImageCopyError(f"cannot read {row.uri}: {err}") from None


def _check_labeled_size(size: tuple[int, int], row: Row) -> None:
    """ImageCopyError unless the image shows at the (width, height) the job labeled."""
    if size != (row.width, row.height):
        raise ImageCopyError(f"the image is {size[0]}x{size[1]} now but was labeled at "
                             f"{row.width}x{row.height}: it changed since the job")


@dataclass
class SliceCount:
    """What slicing made of the rows: images sliced, slices written, slices left out for
    having no box (skip_empty), box parts too small to keep."""

    images: int = 0
    slices: int = 0
    empty_skipped: int = 0
    boxes_dropped: int = 0

    def add(self, other: "SliceCount") -> None:
        self.images += other.images
        self.slices += other.slices
        self.empty_skipped += other.empty_skipped
        self.boxes_dropped += other.boxes_dropped


def _is_lossy(data: bytes) -> bool:
    """Whether the encoded image is in a lossy format (its slices are written as JPEG)."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "WEBP":  # a lossless one holds a VP8L chunk (a bigger PNG if not)
            return b"VP8L" not in data
        return img.format in ("JPEG", "MPO", "HEIF", "AVIF")


def copy_slices(row: Row, name: ImageName, target: Target, folder: str,
                options: SliceOptions) -> tuple[list[tuple[Row, ImageFile]], SliceCount]:
    """Read the row's image, write each of its slices (see the module docstring) -> (the
    slices written, as rows with their image files; the count); ImageCopyError as copy_image."""
    data = _source_bytes(row)
    try:
        # The job labeled row.width x row.height pixels (its own max_pixels allowed them);
        # at least the default limit, so that a source replaced by a larger image is
        # reported by its size below, not as a decompression bomb.
        limit = max(row.width * row.height, InputSpec.model_fields["max_pixels"].default)
        decoded = decode_image(data, max_pixels=limit)
        lossy = _is_lossy(data)
    except (MediaError, OSError) as err:
        raise ImageCopyError(str(err) or "not an image Pillow reads") from None
    _check_labeled_size((decoded.width, decoded.height), row)
    out_format, suffix, options_ = (("JPEG", ".jpg", {"quality": JPEG_QUALITY}) if lossy
                                    else ("PNG", ".png", {}))
    written, count = [], SliceCount(images=1)
    for window in slice_windows(row.width, row.height, options):
        part, dropped = slice_row(row, window, options.min_visible)
        count.boxes_dropped += dropped
        if options.skip_empty and not part.boxes:
            count.empty_skipped += 1
            continue
        x0, y0, x1, y1 = window
        buffer = io.BytesIO()
        Image.fromarray(decoded.pixels[y0:y1, x0:x1]).save(buffer, out_format, **options_)
        slice_name = ImageName(f"{name.key}_{x0}_{y0}_{x1}_{y1}", suffix)
        path = f"{folder}/{slice_name.key}{suffix}"
        target.write(path, buffer.getvalue())
        written.append((part, ImageFile(path, slice_name, folder)))
        count.slices += 1
    return written, count


def copy_images(rows: Iterable[Row], target: Target, failures: Reasons,
                after: Callable[[Row, ImageFile], None] | None = None,
                folder_of: Callable[[Row], str] = lambda row: "images",
                slices: SliceOptions | None = None, sliced: SliceCount | None = None,
                label_files: bool = False) -> Iterator[tuple[Row, ImageFile]]:
    """Copy each row's image into folder_of(row) (on COPY_THREADS threads, then
    `after(row, image)` on the same thread); yields (row, image) in row order. Rows whose
    image cannot be exported are not yielded: their reasons go to `failures`. Errors writing
    the output propagate. With `slices`, each row's slices are written instead and yielded
    as rows of their own (copy_slices), in order, and counted into `sliced`. label_files:
    each image gets a label file named by its key (YOLO), so keys must differ, not only
    names (module docstring)."""

    lock = threading.Lock()  # the copy threads add their slice counts to `sliced`

    def work(row: Row, name: ImageName) -> list[tuple[Row, ImageFile]] | ImageCopyError:
        try:
            if slices is None:
                written = [(row, copy_image(row, name, target, folder_of(row)))]
            else:
                written, count = copy_slices(row, name, target, folder_of(row), slices)
                if sliced is not None:
                    with lock:
                        sliced.add(count)
        except ImageCopyError as err:
            return err
        if after is not None:
            for part, image in written:
                after(part, image)
        return written

    def taken_name(row: Row, name: ImageName) -> str:
        """What two rows must not share, as the message names it."""
        if label_files:
            labels = "labels" + folder_of(row).removeprefix("images")
            return f"label file {labels}/{name.key}.txt"
        if slices is not None:  # slices are named by the key and their window
            return f"slice names {folder_of(row)}/{name.key}_*"
        return f"file name {folder_of(row)}/{name.key}{name.suffix or ''}"

    yield from _copy_all(rows, work, failures, taken_name)


def _copy_all(rows: Iterable[Row], work, failures: Reasons,
              taken_name: Callable[[Row, ImageName], str]) -> Iterator[tuple[Row, ImageFile]]:
    """work(row, name) for each row whose taken_name is free, on the copy threads; yields
    what each returns, in row order."""

    seen: set[bytes] = set()
    pending: deque[tuple[Row, Future]] = deque()
    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="export-copy") as pool:
        for row in rows:
            try:
                name = ImageName.of(row.id)
            except ImageCopyError as err:
                failures.add(str(err))
                continue
            taken = taken_name(row, name)
            digest = hashlib.blake2b(taken.encode(), digest_size=8).digest()
            if digest in seen:
                failures.add(f"{row.id!r} would share its {taken} with an image exported "
                             f"before it")
                continue
            seen.add(digest)
            pending.append((row, pool.submit(work, row, name)))
            while len(pending) >= IN_FLIGHT or (pending and pending[0][1].done()):
                yield from _finished(*pending.popleft(), failures)
        while pending:
            yield from _finished(*pending.popleft(), failures)


def _finished(row: Row, future: Future, failures: Reasons) -> Iterator[tuple[Row, ImageFile]]:
    result = future.result()
    if isinstance(result, ImageCopyError):
        failures.add(str(result))
    else:
        yield from result
