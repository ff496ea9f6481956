"""URIs (local paths and s3://) and model sources.

Model sources: a hub id goes to `from_pretrained` as is (the hub cache, offline when
HF_HUB_OFFLINE is set); a local folder likewise; an `s3://bucket/prefix` is copied once per
node into a local cache and the cached folder is loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

DEFAULT_CACHE = Path(os.environ.get("LABELER_CACHE", Path.home() / ".cache" / "labeler"))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3:// URI.

    S3 settings come from the standard variables (AWS_ENDPOINT_URL, AWS_REGION, keys), as
    boto3 reads them.
    """
    if is_s3(uri):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            scheme, _, host = endpoint.rpartition("://")
            kwargs.update(endpoint_override=host or endpoint, scheme=scheme or "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri.removeprefix("s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def read_bytes(uri: str) -> bytes:
    """The whole content of a local file or an s3:// object."""
    if not is_s3(uri):
        with open(uri, "rb") as f:
            return f.read()
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def resolve_model_source(source: str, cache_dir: Path = DEFAULT_CACHE) -> str:
    """What to hand to `from_pretrained`: the source itself, or for s3:// a local copy.

    Concurrent actors on one node wait on a file lock, so the copy is made once; the copy is
    written to a temporary folder, its sizes checked, then renamed into place atomically.
    """
    if not is_s3(source):
        return source
    key = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:16]
    target = cache_dir / "models" / key
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another actor finished the copy while we waited
            return str(target)
        fs, prefix = filesystem_for(source)
        infos = [i for i in fs.get_file_info(pafs.FileSelector(prefix.rstrip("/"), recursive=True))
                 if i.type == pafs.FileType.File]
        if not infos:
            raise FileNotFoundError(f"no files under {source}")
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}-"))
        try:
            pafs.copy_files(prefix.rstrip("/"), str(staging), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            for info in infos:
                local = staging / os.path.relpath(info.path, prefix.rstrip("/"))
                if local.stat().st_size != info.size:
                    raise OSError(f"incomplete copy of {info.path}: "
                                  f"{local.stat().st_size} of {info.size} bytes")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
