"""WebDataset tar shards, as img2dataset and video2dataset write them.

A sample is the group of members that share a key (the member path up to the first dot of
its file name): `000123.jpg` beside `000123.json` and `000123.txt`. The image member is the
input; the JSON object's fields and the text (as `caption`) become columns of the output,
and a `prompt` field becomes the row's prompt.

Planning reads each tar once, sequentially (tar has no index), and keeps every image
member's byte range; decode tasks then read just those bytes (`storage.byte_range_uri`).
A member cut short by a truncated tar becomes an error row when it is read; a tar whose
headers cannot be read at all fails the job before any work starts.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile

from labeler.config import IMAGE_EXTENSIONS
from labeler.storage import byte_range_uri, filesystem_for, storage_error

log = logging.getLogger(__name__)

TAR_EXTENSIONS = (".tar",)
# Sequential read buffer per tar: large reads keep S3 at its streaming bandwidth.
READ_BUFFER = 8 * 1024**2
# Caption and metadata members are read in planning; larger ones are not metadata.
MAX_METADATA_BYTES = 1024**2


def is_tar(uri: str) -> bool:
    return uri.lower().endswith(TAR_EXTENSIONS)


def sample_key(member: str) -> tuple[str, str]:
    """('dir/000123', 'jpg') for 'dir/000123.jpg'; the extension may hold dots ('seg.json')."""
    folder, name = posixpath.split(member)
    stem, _, ext = name.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def tar_samples(uri: str, tar_id: str) -> list[tuple[str, str, str | None, dict]]:
    """(id, uri, prompt, metadata) of every image member of one tar, in tar order.
    id: `<tar_id>/<key>`; metadata: the fields of `<key>.json`, plus `caption` from
    `<key>.txt`; prompt: metadata's `prompt` field (taken out of metadata)."""
    fs, path = filesystem_for(uri)
    images: dict[str, tuple[int, int, str]] = {}
    meta: dict[str, dict] = {}
    try:
        with fs.open_input_stream(path, buffer_size=READ_BUFFER) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = sample_key(member.name)
                    if ("." + ext.rsplit(".", 1)[-1]) in IMAGE_EXTENSIONS:
                        images.setdefault(key, (member.offset_data, member.size, ext))
                    elif ext in ("json", "txt") and member.size <= MAX_METADATA_BYTES:
                        data = tar.extractfile(member).read()
                        meta.setdefault(key, {}).update(_metadata(data, ext, uri, member.name))
    except tarfile.ReadError as err:
        if not images:
            raise storage_error(uri, "read the tar shard", err) from None
        # Headers after a corrupt or truncated point are lost; the members before it stay.
        log.warning("%s: tar stops being readable after %d samples (%s)", uri, len(images), err)
    except OSError as err:
        raise storage_error(uri, "read", err) from None
    samples = []
    for key, (offset, size, _) in images.items():
        fields = dict(meta.get(key, {}))
        prompt = fields.pop("prompt", None)
        samples.append((f"{tar_id}/{key}", byte_range_uri(uri, offset, size),
                        str(prompt) if prompt else None, fields))
    return samples


def _metadata(data: bytes, ext: str, uri: str, name: str) -> dict:
    """Columns from a `.txt` (caption) or `.json` (its object's fields) member."""
    text = data.decode("utf-8", errors="replace")
    if ext == "txt":
        return {"caption": text.strip()}
    try:
        fields = json.loads(text)
    except json.JSONDecodeError:
        log.warning("%s: %s is not valid JSON; its fields are skipped", uri, name)
        return {}
    return fields if isinstance(fields, dict) else {"json": fields}
