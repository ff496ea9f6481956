"""Parquet and JSONL manifests: one row per input, holding its image or naming where it is.

A manifest either holds the encoded image bytes (as img2dataset's and HF `datasets`'
Parquet files do) or names each image by URI:

- bytes, Parquet: the first of BYTES_COLUMNS that is a binary column, or a struct with a
  binary `bytes` field (HF `datasets`' Image feature: {bytes, path});
- bytes, JSONL: the field `image_base64` (BASE64_FIELDS), base64 text, optionally as a
  `data:<type>;base64,` URL;
- else a URI: the first column of URI_COLUMNS the manifest has (a local path or an s3://
  URI; a relative path is taken relative to the manifest's folder).

Bytes take precedence: img2dataset's Parquet has both `url` (where the image was downloaded
from, carried through) and `jpg`. Planning does not bring the bytes to the driver: each row's
URI addresses the row inside the manifest (storage.manifest_cell_uri), and the decode task
reads just that cell (for Parquet the image column of the row group holding the row; for
JSONL the row's line, by byte range).

The row's id is its `id` or `key` column if there is one, else its URI (URI manifests) or
`<manifest file name>/<row number>` (bytes manifests; rows count from 0). A `prompt` column
becomes the row's prompt; every other column except the bytes is carried through to the
output beside the record. A row with no URI or no bytes becomes an error row.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.storage import (filesystem_for, is_s3, manifest_cell_uri, missing_uri,
                             storage_error)

MANIFEST_EXTENSIONS = (".parquet", ".jsonl", ".ndjson")
URI_COLUMNS = ("uri", "url", "path", "image_uri", "image_path")
# Parquet columns of encoded images, by precedence: HF datasets' `image`, then the names
# img2dataset (`jpg`, `png`, `webp`) and other writers use.
BYTES_COLUMNS = ("image", "image_bytes", "jpg", "jpeg", "png", "webp", "bytes")
# JSONL fields of base64-encoded images.
BASE64_FIELDS = ("image_base64",)
ID_COLUMNS = ("id", "key")
# JSONL manifests are read in chunks of this size (lines are found in them; one line may
# span several chunks), so a manifest of embedded images is never held whole in memory.
READ_CHUNK = 8 * 1024**2

Sample = tuple[str, str, str | None, dict]


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_EXTENSIONS)


def manifest_samples(uri: str, manifest_id: str | None = None) -> list[Sample]:
    """(id, uri, prompt, metadata) of every row of one manifest, in row order. StorageError
    if the manifest cannot be read or parsed, or names its images in no known column.
    manifest_id: the manifest's path relative to the input root (default: its file name),
    which a row without an id of its own is named after: `<manifest_id>/<row>`."""
    manifest_name = manifest_id or uri.rpartition("/")[2]
    if uri.lower().endswith(".parquet"):
        rows, bytes_column = _parquet_rows(uri)
        lines = None
    else:
        rows, lines, bytes_column = _jsonl_rows(uri)
    if not rows:
        return []
    names = list(dict.fromkeys(k for row in rows for k in row))
    id_column = next((c for c in ID_COLUMNS if c in names), None)
    if bytes_column is not None:
        targets = [manifest_cell_uri(uri, n, bytes_column, lines[n] if lines else None)
                   for n in range(len(rows))]
        return [_sample(row, target, id_column, (), f"{manifest_name}/{n}")
                for n, (row, target) in enumerate(zip(rows, targets))]
    uri_column = next((c for c in URI_COLUMNS if c in names), None)
    if uri_column is None:
        raise storage_error(uri, "use the manifest", ValueError(
            f"it has no URI column (one of {', '.join(URI_COLUMNS)}) and no image bytes "
            f"(Parquet: one of {', '.join(BYTES_COLUMNS)}; JSONL: {', '.join(BASE64_FIELDS)}); "
            f"columns: {names}"))
    samples = []
    for number, row in enumerate(rows):
        value = row.get(uri_column)
        if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
            raise storage_error(uri, "use the manifest", ValueError(
                f"row {number} names a web URL in column {uri_column!r} ({value[:80]}); jobs "
                f"read local paths and s3:// URIs: download the images first (img2dataset "
                f"writes Parquet with the images in it, which a job reads as it is)"))
        # A row without a URI still gets an id and a row: it fails to read -> an error row.
        target = _resolve(uri, str(value)) if value else missing_uri(uri, number, uri_column)
        default_id = target if value else f"{manifest_name}#row={number}"
        samples.append(_sample(row, target, id_column, (uri_column,), default_id))
    return samples


def _sample(row: dict, target: str, id_column: str | None, drop: tuple[str, ...],
            default_id: str) -> Sample:
    """One manifest row as (id, uri, prompt, metadata): metadata is every column but the
    id, the prompt and `drop`."""
    id_ = row.get(id_column) if id_column else None
    prompt = row.get("prompt")
    fields = {k: v for k, v in row.items() if k not in (*drop, id_column, "prompt")}
    return (str(id_) if id_ is not None else default_id, target,
            str(prompt) if prompt else None, fields)


def _bytes_column(schema: pa.Schema) -> str | None:
    """The first of BYTES_COLUMNS holding encoded images: binary, or a struct whose `bytes`
    field is binary (HF datasets' Image feature)."""
    for name in BYTES_COLUMNS:
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            kind = kind.field("bytes").type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return name
    return None


def _parquet_rows(uri: str) -> tuple[list[dict], str | None]:
    """(every row without the image bytes column, that column's name or None)."""
    fs, path = filesystem_for(uri)
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            bytes_column = _bytes_column(parquet.schema_arrow)
            names = [n for n in parquet.schema_arrow.names if n != bytes_column]
            if not names:  # only the images: rows without columns, as many as it has
                return [{} for _ in range(parquet.metadata.num_rows)], bytes_column
            return parquet.read(columns=names).to_pylist(), bytes_column
    except (OSError, pa.ArrowInvalid) as err:
        raise storage_error(uri, "read the manifest", err) from None


def _jsonl_rows(uri: str) -> tuple[list[dict], list[tuple[int, int]], str | None]:
    """(every row without its base64 fields, (byte offset, size) of each row's line, the
    base64 field the manifest uses or None). Blank lines are skipped."""
    rows, lines, seen = [], [], set()
    try:
        for number, (offset, line) in enumerate(_lines(uri), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
                raise storage_error(uri, f"parse line {number} of the manifest", err) from None
            if not isinstance(row, dict):
                raise storage_error(uri, f"parse line {number} of the manifest",
                                    ValueError("a line must hold a JSON object"))
            for field in BASE64_FIELDS:
                if row.pop(field, None) is not None:
                    seen.add(field)
            rows.append(row)
            lines.append((offset, len(line)))
    except OSError as err:
        raise storage_error(uri, "read the manifest", err) from None
    return rows, lines, next((f for f in BASE64_FIELDS if f in seen), None)


def _lines(uri: str) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes without the newline) of every line of a file, read in chunks."""
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        pending, start = b"", 0  # bytes not yet split into lines; the offset of pending[0]
        while chunk := f.read(READ_CHUNK):
            pending += chunk
            begin = 0
            while (end := pending.find(b"\n", begin)) >= 0:
                yield start + begin, pending[begin:end]
                begin = end + 1
            pending, start = pending[begin:], start + begin
        if pending:
            yield start, pending


def _resolve(manifest: str, value: str) -> str:
    """A manifest's URI cell as an absolute local path or s3:// URI."""
    if is_s3(value) or posixpath.isabs(value):
        return value
    if is_s3(manifest):
        folder = manifest.rpartition("/")[0]
        if ".." not in value.split("/"):
            return f"{folder}/{value}"  # the key as written (S3 keys may hold // or ./)
        # Keys have no folders, but `..` in a manifest means the one above, as it does for
        # a local manifest; a key never starts above its bucket.
        bucket, _, key = manifest.removeprefix("s3://").partition("/")
        joined = posixpath.normpath(posixpath.join("/", posixpath.dirname(key), value))
        return f"s3://{bucket}{joined}"
    folder = posixpath.dirname(filesystem_for(manifest)[1])
    return posixpath.join(folder, value)
