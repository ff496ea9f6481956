"""URIs (local paths and s3://), byte ranges inside them, and model sources.

S3 settings come from the standard variables, as boto3 and pyarrow read them: the endpoint
from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, SeaweedFS, Ceph), the region from
AWS_REGION or AWS_DEFAULT_REGION, credentials from the AWS SDK chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance roles).
LABELER_S3_ANONYMOUS=1 reads public buckets without signing. Transient errors (throttling,
5xx, dropped connections) are retried with exponential backoff by the SDK.

A URI may end in `#offset=O&size=S`: the S bytes at offset O of the file or object, which is
how one member of a tar shard is addressed without reading the rest of the tar.

Model sources: a hub id goes to `from_pretrained` as is (the hub cache, offline when
HF_HUB_OFFLINE is set); a local folder likewise; an `s3://bucket/prefix` is copied once per
node into a local cache and the cached folder is loaded.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from labeler.config import SpecError

# The variables that shape storage access (S3, the model cache); the driver hands the ones it
# has to its Ray workers.
STORAGE_ENV_VARS = (
    "LABELER_CACHE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
    "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED", "LABELER_S3_ANONYMOUS",
)
# Values never shown in a message (the ids too: they name an account).
SECRET_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Attempts per request, backoff between them: 5 spans ~5 s, enough for a throttling burst or
# an S3-compatible server restarting, short enough that a dead endpoint fails fast.
S3_MAX_ATTEMPTS = 5
# Seconds to open a connection; an endpoint that does not answer fails after the attempts.
S3_CONNECT_TIMEOUT_S = 5.0
_RANGE = re.compile(r"^(?P<base>.+)#offset=(?P<offset>\d+)&size=(?P<size>\d+)$")
_MISSING = re.compile(r"^(?P<base>.+)#row=(?P<row>\d+)&missing=(?P<column>\w+)$")


def default_cache() -> Path:
    """LABELER_CACHE, else ~/.cache/labeler (read at each call: workers get it from the job)."""
    return Path(os.environ.get("LABELER_CACHE") or Path.home() / ".cache" / "labeler")


class StorageError(SpecError):
    """An input or output location that cannot be used (missing bucket, refused credentials,
    an endpoint that does not answer); the message names the URI and the cause, no secrets."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def redact(text: str) -> str:
    """`text` with the values of the credential variables replaced by '***'."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:  # shorter values would redact ordinary words
            text = text.replace(value, "***")
    return text


def storage_error(uri: str, action: str, err: BaseException) -> StorageError:
    """StorageError('cannot <action> <uri>: <cause>'), the cause redacted."""
    cause = getattr(err, "strerror", None) if isinstance(err, FileNotFoundError) else None
    return StorageError(redact(f"cannot {action} {uri}: {cause or err}"))


def storage_env() -> dict[str, str]:
    """The storage variables set here, to give Ray workers the same view of storage as the
    driver (they travel in the tasks' runtime_env; on a cluster prefer instance roles to
    keys, which then stay out of it)."""
    return {k: os.environ[k] for k in STORAGE_ENV_VARS if os.environ.get(k)}


def _s3_settings() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in storage_env().items() if k != "LABELER_CACHE"))


@functools.lru_cache(maxsize=4)
def _s3_filesystem(settings: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    """One S3FileSystem per distinct configuration (building one resolves credentials)."""
    env = dict(settings)
    kwargs: dict = {"connect_timeout": S3_CONNECT_TIMEOUT_S,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if env.get("LABELER_S3_ANONYMOUS", "").lower() in ("1", "true", "yes"):
        kwargs["anonymous"] = True
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or an s3:// URI."""
    if is_s3(uri):
        return _s3_filesystem(_s3_settings()), uri.removeprefix("s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def byte_range_uri(uri: str, offset: int, size: int) -> str:
    """The URI of `size` bytes at `offset` inside `uri` (read back by read_bytes)."""
    return f"{uri}#offset={offset}&size={size}"


def missing_uri(manifest: str, row: int, column: str) -> str:
    """The URI of a manifest row that names no input: reading it fails with the reason."""
    return f"{manifest}#row={row}&missing={column}"


def read_bytes(uri: str) -> bytes:
    """The content of a local file or an s3:// object, or of a byte range of one.
    OSError (FileNotFoundError for a missing object) when it cannot be read."""
    missing = _MISSING.match(uri)
    if missing:
        raise FileNotFoundError(2, f"row {missing['row']} of the manifest has no "
                                   f"{missing['column']}")
    found = _RANGE.match(uri)
    if found:
        base, offset, size = found["base"], int(found["offset"]), int(found["size"])
        fs, path = filesystem_for(base)
        with fs.open_input_file(path) as f:
            data = f.read_at(size, offset)
        if len(data) != size:
            raise OSError(f"{base} ends before byte {offset + size} (truncated)")
        return data
    if not is_s3(uri):
        with open(uri, "rb") as f:
            return f.read()
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def resolve_model_source(source: str, cache_dir: Path | None = None) -> str:
    """What to hand to `from_pretrained`: the source itself, or for s3:// a local copy.

    Concurrent actors on one node wait on a file lock, so the copy is made once; the copy is
    written to a temporary folder, its sizes checked, then renamed into place atomically.
    """
    if not is_s3(source):
        return source
    cache_dir = cache_dir or default_cache()
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
