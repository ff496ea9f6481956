"""URIs (local paths and s3://), byte ranges inside them, and model sources.

S3 settings come from the standard variables, as boto3 and pyarrow read them: the endpoint
from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO, SeaweedFS, Ceph), the region from
AWS_REGION or AWS_DEFAULT_REGION, credentials from the AWS SDK chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance roles).
LABELER_S3_ANONYMOUS=1 reads public buckets without signing. Transient errors (throttling,
5xx, refused or dropped connections) are retried by the SDK with a fixed exponential backoff
(see S3_MAX_ATTEMPTS), so a request rides out an outage of up to ~12 s, such as an
S3-compatible server restarting.

A URI may end in a fragment that addresses part of the file or object (read_bytes reads it):

    #offset=O&size=S                     the S bytes at offset O: one member of a tar shard
    #row=N&column=C                      the image bytes in column C of row N of a Parquet
                                         manifest (C binary, or a struct with a `bytes` field)
    #row=N&offset=O&size=S&column=C      row N of a JSONL manifest, the line at bytes O..O+S,
                                         its field C holding base64 image bytes
    #row=N&missing=C                     a manifest row with nothing in column C (an error)
    #unreadable_from=O&reason=R          a tar whose stream breaks at byte O (an error)

The errors (a missing row value, a broken tar, a truncated range) are OSErrors, which the
decode stage turns into an error row naming the reason.

Model sources: a hub id goes to `from_pretrained` as is (the hub cache, offline when
HF_HUB_OFFLINE is set); a local folder likewise; an `s3://bucket/prefix` is copied once per
node into a local cache and the cached folder is loaded.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

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
# Set to 1 to send the keys in the runtime_env of a cluster's workers too (worker_env).
FORWARD_CREDENTIALS_ENV = "LABELER_FORWARD_CREDENTIALS"
# Retries per request (the SDK's default strategy counts its `max_attempts` as retries), with
# its fixed exponential backoff (no jitter: an immediate first retry, then 50 ms doubling):
# 9 retries wait 0.05 + 0.1 + ... + 6.4 = 12.75 s in all. That rides
# out a throttling burst or an S3-compatible server restarting (SeaweedFS answers 500 for up
# to ~5 s after its restart, until its volume server has registered again), and a dead
# endpoint still fails in ~13 s. The SDK's "standard" strategy waits a random 0..2^n s
# instead, so whether an outage of a few seconds is ridden out would be a matter of chance.
S3_MAX_ATTEMPTS = 9
# Seconds to open a connection; an endpoint that does not answer fails after the attempts.
S3_CONNECT_TIMEOUT_S = 5.0
# Parquet row groups whose image column each process keeps: decode tasks get consecutive
# rows (16 per task), so the next rows are mostly in the group just read, and 2 covers a task
# whose rows straddle two groups. The memory is that of 2 row groups of the image column
# (HF datasets writes 100 images per group; write large manifests with small row groups).
PARQUET_CACHE_GROUPS = 2
_RANGE = re.compile(r"^(?P<base>.+)#offset=(?P<offset>\d+)&size=(?P<size>\d+)$")
_MISSING = re.compile(r"^(?P<base>.+)#row=(?P<row>\d+)&missing=(?P<column>\w+)$")
_CELL = re.compile(r"^(?P<base>.+)#row=(?P<row>\d+)"
                   r"(?:&offset=(?P<offset>\d+)&size=(?P<size>\d+))?&column=(?P<column>\w+)$")
_UNREADABLE = re.compile(r"^(?P<base>.+)#unreadable_from=(?P<offset>\d+)&reason=(?P<reason>\w+)$")
# What an unreadable tar's `reason` code says.
UNREADABLE_REASONS = {
    "invalid_header": "a member header is corrupt",
    "truncated": "the file ends inside a member header",
    "unexpected_end": "the file ends inside a member",
    "empty": "the file is empty",
}


def default_cache() -> Path:
    """LABELER_CACHE, else ~/.cache/labeler (read at each call: workers get it from the job)."""
    return Path(os.environ.get("LABELER_CACHE") or Path.home() / ".cache" / "labeler")


class StorageError(SpecError):
    """An input or output location that cannot be used (missing bucket, refused credentials,
    an endpoint that does not answer); the message names the URI and the cause, no secrets."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def comparable_path(uri: str) -> str:
    """A location as two are compared (path_within): an S3 URI without its trailing '/', a
    local path absolute with its links and '..' resolved."""
    return uri.rstrip("/") if is_s3(uri) else os.path.realpath(uri).rstrip("/") or "/"


def path_within(path: str, folder: str) -> bool:
    """Whether comparable `path` is `folder` or lies below it."""
    return (path + "/").startswith(folder.rstrip("/") + "/")


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


def storage_env(secrets: bool = True) -> dict[str, str]:
    """The storage variables set here (secrets: the keys too), to give Ray workers the same
    view of storage as the driver."""
    return {k: os.environ[k] for k in STORAGE_ENV_VARS
            if os.environ.get(k) and (secrets or k not in SECRET_ENV_VARS)}


def worker_env(extra: dict[str, str] | None = None) -> dict:
    """Remote args (Ray tasks, actors, Serve's ray_actor_options) that give workers the
    driver's storage settings (storage_env: S3 endpoint, region, model cache), so `s3://`
    inputs and models resolve the same way on every node, plus the `extra` variables a
    stage sets for its own workers; none when there are none.

    The keys (SECRET_ENV_VARS) go only to a Ray this process started, on this machine: a
    runtime_env is shown by the Ray dashboard and its job and Serve APIs to whoever reaches
    them. A cluster's nodes have their own (instance role, Kubernetes secret);
    LABELER_FORWARD_CREDENTIALS=1 sends this shell's keys anyway."""
    env = {**storage_env(secrets=forwards_credentials()), **(extra or {})}
    return {"runtime_env": {"env_vars": env}} if env else {}


def forwards_credentials() -> bool:
    """Whether keys may travel in a runtime_env (worker_env's rule): to a Ray this process
    started, or with LABELER_FORWARD_CREDENTIALS=1."""
    if os.environ.get(FORWARD_CREDENTIALS_ENV, "").lower() in ("1", "true", "yes"):
        return True
    from labeler.ray_node import ray_started_here

    return ray_started_here()


def _s3_settings() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in storage_env().items() if k != "LABELER_CACHE"))


@functools.lru_cache(maxsize=4)
def _s3_filesystem(settings: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    """One S3FileSystem per distinct configuration (building one resolves credentials)."""
    env = dict(settings)
    kwargs: dict = {"connect_timeout": S3_CONNECT_TIMEOUT_S,
                    "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS)}
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


def manifest_cell_uri(manifest: str, row: int, column: str,
                      line: tuple[int, int] | None = None) -> str:
    """The URI of the image bytes of row `row` (0-based) of a manifest, in `column`: a
    Parquet binary (or {bytes, path} struct) column, or with `line` = (byte offset, size)
    of the row's line, a JSONL field holding base64."""
    where = f"&offset={line[0]}&size={line[1]}" if line is not None else ""
    return f"{manifest}#row={row}{where}&column={column}"


def unreadable_uri(uri: str, offset: int, reason: str) -> str:
    """The URI standing for the part of a tar from byte `offset` on that cannot be read
    (`reason`: a key of UNREADABLE_REASONS); reading it fails with that reason."""
    return f"{uri}#unreadable_from={offset}&reason={reason}"


def read_bytes(uri: str) -> bytes:
    """The content of a local file or an s3:// object, or of the part of one that the URI's
    fragment addresses (see the module docstring). OSError (FileNotFoundError for a missing
    file or object) when it cannot be read, with the reason."""
    missing = _MISSING.match(uri)
    if missing:
        raise FileNotFoundError(2, f"row {missing['row']} of the manifest has no "
                                   f"{missing['column']}")
    broken = _UNREADABLE.match(uri)
    if broken:
        reason = UNREADABLE_REASONS.get(broken["reason"], broken["reason"])
        raise OSError(f"the tar {broken['base']} is unreadable from byte {broken['offset']} on "
                      f"({reason}): the samples stored after that point are lost")
    cell = _CELL.match(uri)
    if cell:
        return _manifest_cell(cell["base"], int(cell["row"]), cell["column"],
                              None if cell["offset"] is None else
                              (int(cell["offset"]), int(cell["size"])))
    found = _RANGE.match(uri)
    if found:
        return _read_range(found["base"], int(found["offset"]), int(found["size"]))
    if not is_s3(uri):
        with open(uri, "rb") as f:
            return f.read()
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _read_range(uri: str, offset: int, size: int) -> bytes:
    fs, path = filesystem_for(uri)
    with fs.open_input_file(path) as f:
        data = f.read_at(size, offset)
    if len(data) != size:
        raise OSError(f"{uri} ends before byte {offset + size} (truncated)")
    return data


def _manifest_cell(manifest: str, row: int, column: str,
                   line: tuple[int, int] | None) -> bytes:
    """The image bytes of one manifest row (see manifest_cell_uri); OSError naming the row
    when it has none (null, empty, not base64)."""
    if line is None:
        value = _parquet_cell(manifest, row, column)
    else:
        value = _jsonl_cell(manifest, row, column, *line)
    if value is None:
        raise OSError(f"row {row} of the manifest has no image bytes ({column} is null)")
    if not value:
        raise OSError(f"row {row} of the manifest has no image bytes ({column} is empty)")
    return value


def _jsonl_cell(manifest: str, row: int, column: str, offset: int, size: int) -> bytes | None:
    """The base64 field `column` of the JSONL line at offset..offset+size, decoded; a
    `data:<type>;base64,` prefix is allowed."""
    try:
        fields = json.loads(_read_range(manifest, offset, size))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OSError(f"row {row} of the manifest is no longer a JSON object at bytes "
                      f"{offset}..{offset + size} (was the manifest changed after planning?)") from None
    value = fields.get(column) if isinstance(fields, dict) else None
    if value is None or value == "":
        return None if value is None else b""
    if not isinstance(value, str):
        raise OSError(f"row {row} of the manifest: {column} holds a {type(value).__name__}, "
                      f"not base64 text")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise OSError(f"row {row} of the manifest: {column} is not valid base64 ({err})") from None


_parquet_cache: OrderedDict[tuple, pa.Array] = OrderedDict()
_parquet_lock = threading.Lock()


def _parquet_cell(manifest: str, row: int, column: str) -> bytes | None:
    """Row `row` of the Parquet image column `column`, reading only that column of the row
    group holding the row, and keeping the last PARQUET_CACHE_GROUPS groups read in this
    process. The cache key holds the file's size and mtime, so a rewritten manifest is read
    afresh (one stat / HEAD per row)."""
    fs, path = filesystem_for(manifest)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(2, f"the manifest {manifest} does not exist")
    identity = (manifest, column, info.size, info.mtime_ns)
    with _parquet_lock:
        for key, values in _parquet_cache.items():
            if key[0] == identity and key[1] <= row < key[2]:
                _parquet_cache.move_to_end(key)
                return values[row - key[1]].as_py()
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        meta, start = parquet.metadata, 0
        for group in range(meta.num_row_groups):
            stop = start + meta.row_group(group).num_rows
            if row < stop:
                break
            start = stop
        else:
            raise OSError(f"the manifest has no row {row} (it has {start} rows)")
        schema = parquet.schema_arrow
        if column not in schema.names:
            raise OSError(f"the manifest has no column {column} (was it changed after planning?)")
        nested = pa.types.is_struct(schema.field(column).type)
        values = parquet.read_row_group(group, columns=[f"{column}.bytes" if nested else column])
    values = values.column(0).combine_chunks()
    if nested:
        values = pc.struct_field(values, "bytes")  # null where the struct itself is null
    with _parquet_lock:
        _parquet_cache[(identity, start, stop)] = values
        while len(_parquet_cache) > PARQUET_CACHE_GROUPS:
            _parquet_cache.popitem(last=False)
    return values[row - start].as_py()


def resolve_model_source(source: str, cache_dir: Path | None = None) -> str:
    """What to hand to `from_pretrained`: the source itself, or for s3:// a local copy.

    The copy is keyed by the source and by its listing (each object's key, size and
    modification time), so a model uploaded again under the same prefix is copied again,
    and the earlier copies of that source are then deleted (a process that loaded one keeps
    its open files). Concurrent actors on one node wait on a file lock, so each copy is made
    once; it is written to a temporary folder, its sizes checked, then renamed into place
    atomically.
    """
    if not is_s3(source):
        return source
    cache_dir = cache_dir or default_cache()
    fs, prefix = filesystem_for(source)
    prefix = prefix.rstrip("/")
    infos = sorted((i for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
                    if i.type == pafs.FileType.File), key=lambda i: i.path)
    if not infos:
        raise FileNotFoundError(f"no files under {source}")
    source_key = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:16]
    listing = "\n".join(f"{i.path}\t{i.size}\t{i.mtime_ns}" for i in infos)
    folder = cache_dir / "models" / source_key
    target = folder / hashlib.sha256(listing.encode()).hexdigest()[:16]
    if target.is_dir():
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another actor finished the copy while we waited
            return str(target)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".copy-"))
        try:
            pafs.copy_files(prefix, str(staging), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            for info in infos:
                local = staging / os.path.relpath(info.path, prefix)
                if local.stat().st_size != info.size:
                    raise OSError(f"incomplete copy of {info.path}: "
                                  f"{local.stat().st_size} of {info.size} bytes")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for earlier in folder.iterdir():  # copies of the model as it was uploaded before
            if earlier == target or earlier.name.startswith("."):
                continue
            if earlier.is_dir():
                shutil.rmtree(earlier, ignore_errors=True)
            else:  # a file of a copy made by labeler before copies were versioned
                earlier.unlink(missing_ok=True)
    return str(target)


def model_source_problem(source: str, revision: str | None = None,
                         family: str | None = None) -> str | None:
    """Why `source` cannot be loaded as a model, found without loading it, or None: a local
    folder that does not exist or holds no config.json, an s3:// prefix without one, a hub
    id not in the hub cache when HF_HUB_OFFLINE is set or that the hub does not serve
    (_hub_problem), or (given `family`) a config.json whose model_type is another family's.
    A hub model is not downloaded here (that is the workers' work). Sources that look like
    paths (`/`, `./`, `~`, more than one `/`) are paths; `org/name` is a hub id unless such
    a folder exists."""
    if is_s3(source):
        fs, prefix = filesystem_for(source.rstrip("/"))
        try:
            found = fs.get_file_info(f"{prefix}/config.json").type == pafs.FileType.File
            config = read_bytes(f"{source.rstrip('/')}/config.json") if found else None
        except OSError as err:
            raise storage_error(source, "read the model", err) from None
        if config is None:
            return f"{source} holds no config.json (a model folder's)"
        return _family_problem(source, config, family)
    path = os.path.expanduser(source)
    looks_like_a_path = source.startswith(("/", "./", "../", "~")) or source.count("/") > 1
    if os.path.exists(path) or looks_like_a_path:
        if not os.path.isdir(path):
            return f"no such model folder {source!r}"
        if not os.path.isfile(os.path.join(path, "config.json")):
            return f"{source!r} holds no config.json (a model folder's)"
        return _family_problem(source, Path(path, "config.json").read_bytes(), family)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import is_offline_mode

    try:
        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except ValueError as err:  # not a valid repository id
        return f"{source!r} is neither a folder nor a hub id ({err})"
    if isinstance(cached, str):
        return _family_problem(source, Path(cached).read_bytes(), family)
    if is_offline_mode():
        return (f"hub model {source!r} is not in the hub cache, and HF_HUB_OFFLINE is set "
                f"(download it first, or give a local folder)")
    return _hub_problem(source, revision)


# Seconds the driver waits for the hub to answer whether a model it must download exists.
HUB_CHECK_TIMEOUT_S = 10


def _hub_problem(source: str, revision: str | None) -> str | None:
    """Why the workers could not download hub model `source`, asked of the hub once (one
    HEAD of its config.json, no retries), or None: the hub cannot be reached (a machine
    without internet, where each worker retried each file for minutes), or has no such
    model, revision or file. A hub answering otherwise (5xx, throttling) is left to the
    workers' retries."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        HTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    url = hf_hub_url(source, "config.json", revision=revision, endpoint=constants.ENDPOINT)
    try:
        get_hf_file_metadata(url, timeout=HUB_CHECK_TIMEOUT_S)
    except GatedRepoError:
        return (f"hub model {source!r} is gated: accept its terms on its page of "
                f"{constants.ENDPOINT} and set HF_TOKEN")
    except RepositoryNotFoundError:
        return (f"no hub model {source!r} on {constants.ENDPOINT} (a typo? a private one "
                f"needs HF_TOKEN)")
    except RevisionNotFoundError:
        return f"hub model {source!r} has no revision {revision!r}"
    except EntryNotFoundError:
        return f"hub model {source!r} holds no config.json (a model's)"
    except HfHubHTTPError:
        return None
    except HTTPError as err:  # no answer at all
        return (f"hub model {source!r} is not in the hub cache, and {constants.ENDPOINT} "
                f"cannot be reached ({err}); download it where there is a network and set "
                f"HF_HUB_OFFLINE=1, or give a local folder")
    return None


def _family_problem(source: str, config: bytes, family: str | None) -> str | None:
    """Why a checkpoint whose config.json is `config` is not one of `family`'s, or None: its
    model_type is another family's (a model_type of no family is left to transformers)."""
    from labeler.registry import MODEL_TYPES

    try:
        model_type = json.loads(config).get("model_type")
    except (ValueError, AttributeError):
        return f"{source!r}: its config.json is not a JSON object"
    if family is None or model_type == MODEL_TYPES.get(family):
        return None
    others = [name for name, kind in MODEL_TYPES.items() if kind == model_type]
    if not others:
        return None
    return (f"{source!r} holds a model of family {others[0]} (model_type {model_type!r}), "
            f"not {family}: give model.family {others[0]} (--family {others[0]}), or a "
            f"{family} model")


def check_model_sources(tasks, field: str) -> None:
    """SpecError naming the first task whose model cannot be loaded, as far as that shows
    without loading it (model_source_problem): otherwise every actor would fail to
    start, and every row would become an error row blaming a dead worker."""
    for k, task in enumerate(tasks):
        problem = model_source_problem(task.model.source, task.model.revision,
                                       task.model.family)
        if problem is not None:
            raise SpecError(f"{field}.{k}.model.source: {problem}")


# Read size of open_input on S3 and byte ranges: each read is one ranged GET (~10-50 ms), so
# reads are buffered; 2 MiB is ~2 s of 1080p H.264 (~8 Mbit/s) per GET, and all a seek can
# waste.
OPEN_INPUT_BUFFER = 2 * 1024**2


def open_input(uri: str, whole_up_to: int = 0) -> io.BufferedIOBase:
    """A seekable binary file object over a local file, an s3:// object, or a byte range of
    either (`#offset=O&size=S`), for readers that take a file and read only part of it
    (PyAV seeking through a video). Only the bytes read are fetched, except that an S3
    object or byte range of at most `whole_up_to` bytes is fetched whole, in one request,
    and served from memory: for readers that would read it more than once. OSError
    (FileNotFoundError for a missing object) when it cannot be opened; reads past the end of
    a cut-short byte range return less, as at the end of a file."""
    if _MISSING.match(uri) or _UNREADABLE.match(uri) or _CELL.match(uri):
        # A manifest cell is held whole in memory anyway; the others raise their reason.
        return io.BytesIO(read_bytes(uri))
    found = _RANGE.match(uri)
    base = found["base"] if found else uri
    if not found and not is_s3(base):
        return open(base, "rb")
    fs, path = filesystem_for(base)
    native = fs.open_input_file(path)
    if found:
        offset, size = int(found["offset"]), int(found["size"])
    else:
        offset, size = 0, native.size()
    if size <= whole_up_to:
        try:
            return io.BytesIO(native.read_at(size, offset))
        finally:
            native.close()
    return io.BufferedReader(_ByteWindow(native, offset, size), OPEN_INPUT_BUFFER)


class _ByteWindow(io.RawIOBase):
    """Read-only, seekable view of `size` bytes at `offset` of a pyarrow random-access
    file; positions are relative to the window. Closing it closes the file."""

    def __init__(self, native, offset: int, size: int):
        super().__init__()
        self._native, self._offset, self._size, self._pos = native, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if origin + pos < 0:
            raise OSError(22, f"negative seek position {origin + pos}")
        self._pos = origin + pos
        return self._pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        data = self._native.read_at(count, self._offset + self._pos) if count else b""
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._native.close()
        super().close()
