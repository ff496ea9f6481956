"""Parquet and JSONL manifests: one row per input, naming where its image is.

The image is found in the first column of URI_COLUMNS the manifest has (a local path or an
s3:// URI; a relative path is taken relative to the manifest's folder). The row's id is its
`id` or `key` column if there is one, else its URI. A `prompt` column becomes the row's
prompt; every other column is carried through to the output beside the record. A row with
no URI becomes an error row.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow.parquet as pq

from labeler.storage import filesystem_for, is_s3, missing_uri, storage_error

MANIFEST_EXTENSIONS = (".parquet", ".jsonl", ".ndjson")
URI_COLUMNS = ("uri", "url", "path", "image_uri", "image_path")
ID_COLUMNS = ("id", "key")


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_EXTENSIONS)


def read_manifest_rows(uri: str) -> list[dict]:
    """The manifest's rows as dicts (StorageError if it cannot be read or parsed)."""
    fs, path = filesystem_for(uri)
    try:
        if uri.lower().endswith(".parquet"):
            return pq.read_table(path, filesystem=fs).to_pylist()
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8")
    except OSError as err:
        raise storage_error(uri, "read the manifest", err) from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise storage_error(uri, f"parse line {number} of the manifest", err) from None
        if not isinstance(row, dict):
            raise storage_error(uri, f"parse line {number} of the manifest",
                                ValueError("a line must hold a JSON object"))
        rows.append(row)
    return rows


def _resolve(manifest: str, value: str) -> str:
    """A manifest's URI cell as an absolute local path or s3:// URI."""
    if is_s3(value) or posixpath.isabs(value):
        return value
    folder = manifest.rpartition("/")[0] if is_s3(manifest) else posixpath.dirname(
        filesystem_for(manifest)[1])
    return posixpath.join(folder, value)


def manifest_samples(uri: str) -> list[tuple[str, str, str | None, dict]]:
    """(id, uri, prompt, metadata) of every row of one manifest, in row order."""
    rows = read_manifest_rows(uri)
    if not rows:
        return []
    names = list(dict.fromkeys(k for row in rows for k in row))
    uri_column = next((c for c in URI_COLUMNS if c in names), None)
    if uri_column is None:
        raise storage_error(uri, "use the manifest", ValueError(
            f"it has no URI column (one of {', '.join(URI_COLUMNS)}); columns: {names}"))
    id_column = next((c for c in ID_COLUMNS if c in names), None)
    manifest_name = uri.rpartition("/")[2]
    samples = []
    for number, row in enumerate(rows):
        value = row.get(uri_column)
        # A row without a URI still gets an id and a row: it fails to read -> an error row.
        target = _resolve(uri, str(value)) if value else missing_uri(uri, number, uri_column)
        id_ = row.get(id_column) if id_column else None
        id_ = str(id_) if id_ is not None else (target if value else f"{manifest_name}#row={number}")
        prompt = row.get("prompt")
        fields = {k: v for k, v in row.items() if k not in (uri_column, id_column, "prompt")}
        samples.append((id_, target, str(prompt) if prompt else None, fields))
    return samples
