"""WebDataset tar shards, as img2dataset and video2dataset write them.

A sample is the group of members that share a key (the member path up to the first dot of
its file name): `000123.jpg` beside `000123.json` and `000123.txt`. The media member (an
image, or for a video job a video: `extensions`) is the input; the JSON object's fields and
the text (as `caption`) become columns of the output, and a `prompt` field becomes the row's
prompt.

Planning reads each tar once, sequentially (tar has no index), and keeps every media
member's byte range; decode tasks then read just those bytes (`storage.byte_range_uri`).

A tar whose stream breaks (a corrupt member header, a file cut short inside a header or a
metadata member, a file that is no tar at all) keeps the samples before the break, and adds
one error row for the rest: id `<tar id>/<unreadable from byte N>`, whose uri
(`storage.unreadable_uri`) fails to read with the reason, so the loss shows in the output and
the job goes on. A media member cut short by a truncated tar is itself the error row (its
byte range reads as truncated).
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile

from labeler.config import IMAGE_EXTENSIONS
from labeler.storage import byte_range_uri, filesystem_for, storage_error, unreadable_uri

log = logging.getLogger(__name__)

TAR_EXTENSIONS = (".tar",)
# Sequential read buffer per tar: large reads keep S3 at its streaming bandwidth.
READ_BUFFER = 8 * 1024**2
# Caption and metadata members are read in planning; larger ones are not metadata.
MAX_METADATA_BYTES = 1024**2
# Size of a tar header (and of the zero blocks that end an archive).
TAR_BLOCK = 512

Sample = tuple[str, str, str | None, dict]


def is_tar(uri: str) -> bool:
    return uri.lower().endswith(TAR_EXTENSIONS)


def sample_key(member: str) -> tuple[str, str]:
    """('dir/000123', 'jpg') for 'dir/000123.jpg'; the extension may hold dots ('seg.json')."""
    folder, name = posixpath.split(member)
    stem, _, ext = name.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def unreadable_id(tar_id: str, offset: int) -> str:
    """The id of the error row standing for a tar's unreadable remainder."""
    return f"{tar_id}/<unreadable from byte {offset}>"


def tar_samples(uri: str, tar_id: str,
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Sample]:
    """(id, uri, prompt, metadata) of every member of one tar whose extension is one of
    `extensions` (lower case, with the dot), in tar order, plus one error row for the
    remainder of a tar whose stream breaks (see the module docstring).
    id: `<tar_id>/<key>` (a key's other media members: `<tar_id>/<member name>`);
    metadata: the fields of `<key>.json`, plus `caption` from
    `<key>.txt`; prompt: metadata's `prompt` field (taken out of metadata). StorageError if
    the tar cannot be opened or read (a missing object, a storage failure)."""
    fs, path = filesystem_for(uri)
    # sample name -> (its key, data offset, size). A key's first media member is the sample
    # `key`; another one of the same key (`s1.left.png`, `s1.right.png`) is a sample of its
    # own, named by its member name, with the key's metadata: none is dropped.
    media: dict[str, tuple[str, int, int]] = {}
    meta: dict[str, dict] = {}
    tar = last = None
    try:
        with fs.open_input_stream(path, buffer_size=READ_BUFFER) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for last in tar:
                    # Hidden members (macOS tar's `._key.jpg` beside each file) are no
                    # part of a sample, as webdataset's own reader skips them.
                    if not last.isfile() or posixpath.basename(last.name).startswith("."):
                        continue
                    key, ext = sample_key(last.name)
                    if ("." + ext.rsplit(".", 1)[-1]) in extensions:
                        name = key if key not in media else last.name
                        media.setdefault(name, (key, last.offset_data, last.size))
                    elif ext in ("json", "txt") and last.size <= MAX_METADATA_BYTES:
                        data = tar.extractfile(last).read()
                        meta.setdefault(key, {}).update(_metadata(data, ext, uri, last.name))
                last = None  # the stream ended without an error
                end = tar.offset
        broken = _check_end(fs, path, end)
    except tarfile.ReadError as err:
        broken = _broken_at(err, tar, last, media)
    except OSError as err:
        raise storage_error(uri, "read", err) from None
    samples = []
    for name, (key, offset, size) in media.items():
        fields = dict(meta.get(key, {}))
        prompt = fields.pop("prompt", None)
        samples.append((f"{tar_id}/{name}", byte_range_uri(uri, offset, size),
                        str(prompt) if prompt else None, fields))
    if broken is not None:
        offset, reason = broken
        log.warning("%s: unreadable from byte %d on (%s) after %d samples", uri, offset,
                    reason, len(samples))
        samples.append((unreadable_id(tar_id, offset), unreadable_uri(uri, offset, reason),
                        None, {}))
    return samples


def _check_end(fs, path: str, end: int) -> tuple[int, str] | None:
    """Where a tar whose member list ended quietly at byte `end` breaks, or None if it ends
    properly. tarfile stops without an error at a header it cannot parse past the first one,
    so the block there tells: zeros (the end-of-archive marker) or nothing (a file cut at a
    member boundary) end the archive; anything else is a corrupt header, or a cut one if the
    file ends inside it."""
    with fs.open_input_file(path) as f:
        block = f.read_at(TAR_BLOCK, end)
    if not block.strip(b"\0"):
        return None
    return end, "invalid_header" if len(block) == TAR_BLOCK else "truncated"


def _broken_at(err: tarfile.ReadError, tar: tarfile.TarFile | None,
               last: tarfile.TarInfo | None, media: dict) -> tuple[int, str] | None:
    """(byte offset, reason code) where the stream broke with `err`; None when the only loss
    is a media member cut short, which is its own error row. `last`: the member being read
    when it broke (None: a header)."""
    if tar is None:  # the first header: empty, or not a tar at all
        return 0, "empty" if str(err) == "empty file" else "invalid_header"
    if last is not None and "unexpected end of data" in str(err):
        if any((offset, size) == (last.offset_data, last.size)
               for _, offset, size in media.values()):
            return None
        return last.offset, "unexpected_end"
    return tar.offset, "invalid_header"


def _metadata(data: bytes, ext: str, uri: str, name: str) -> dict:
    """Columns from a `.txt` (caption) or `.json` (its object's fields) member."""
    text = data.decode("utf-8", errors="replace")
    if ext == "txt":
        return {"caption": text.strip()}
    try:
        fields = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # nested past the parser's depth
        log.warning("%s: %s is not valid JSON; its fields are skipped", uri, name)
        return {}
    return fields if isinstance(fields, dict) else {"json": fields}
