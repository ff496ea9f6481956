"""Parquet sink with deterministic file names, write-then-commit, and resume; on a local
folder or under an s3:// prefix.

Layout under the output root:

    <task_name>/part-00000.parquet   rows of input shard 0 (inputs 0..files_per_shard-1)
    _job.json                         what the output holds: inputs, tasks, spec fingerprint
    _SUCCESS                          written last, with the job summary

An input may give several rows (a video: one per sampled frame or clip), a number known only
once the input has been read; so every row carries its `part_index` among its input's rows
and whether it is the input's `last_part`. An input is complete when its last part and all
parts before it have arrived; a shard when all its inputs are.

A shard file appears only when every row of the shard has arrived, whole, so a crashed run
never leaves a partial file that reads as results. Locally it is written under a dot-name
and renamed into place (files starting with '.' or '_' are ignored by pyarrow's dataset
discovery); on S3 an object becomes visible only when its upload completes, so it is written
under its final name directly (an interrupted multipart upload stays invisible). On a rerun
with the same spec, committed shards are skipped: only the missing inputs are labeled.

With `retry_errors`, a rerun also reopens every shard that all tasks committed and that
holds an error row: the inputs with an error row (in any task) are labeled again, the rows
of the shard's other inputs are kept as they are, and the shard file is replaced (written
then renamed, as any commit) once the retried inputs' rows are in.

Ray Data's own `write_parquet` names files by block and write task, not by input shard, and
has no commit per group of inputs; so the driver, which sees every (small) record anyway for
the progress bar, writes the files.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# The files beside the task folders: the job's identity, written first, and its summary,
# written last (the job finished).
MANIFEST_FILE, SUCCESS_FILE = "_job.json", "_SUCCESS"

from labeler.config import OPTIONS_OFF_WHEN_UNSET, SpecError
from labeler.schemas import RECORD_SCHEMA
from labeler.storage import filesystem_for, is_s3, storage_error

# Columns that route rows to files and order them; dropped before writing.
ROUTING_COLUMNS = ("shard", "part_index", "last_part", "unchanged_frames")


class OutputConflict(SpecError):
    """The output folder holds the results of a different job (or files not labeler's):
    refused before any work starts, like a bad spec (the command line exits with 2)."""


def describe_differences(stored: dict | None, current: dict | None) -> str:
    """What differs between a stored job identity and the current one, for a person:
    "tasks.0.threshold: 0.3 there, 0.5 now; ...". A field absent on one side is at its
    default there. Without both identities (an output of an older labeler), a general
    reason."""
    if not stored or not current:
        return "other inputs or task parameters"
    stored, current = dict(stored), dict(current)
    reasons = []
    old_inputs, new_inputs = stored.pop("inputs", {}), current.pop("inputs", {})
    if old_inputs != new_inputs:
        before, now = old_inputs.get("count"), new_inputs.get("count")
        reasons.append(f"inputs: {before:,} there, {now:,} now" if before != now else
                       f"inputs: other files, ids or prompts ({now:,} both times)")
    old_contents, new_contents = stored.pop("contents", {}), current.pop("contents", {})
    for key in sorted(old_contents.keys() & new_contents.keys()):
        if old_contents[key] != new_contents[key]:
            reasons.append(f"{key}: other contents" if not key.endswith(".captions") else
                           f"{key}: other captions")
    old_tasks, new_tasks = stored.get("tasks"), current.get("tasks")
    if isinstance(old_tasks, list) and isinstance(new_tasks, list) \
            and len(old_tasks) != len(new_tasks):
        # A task added or removed has no fields "at the default" on the other side: say so,
        # and compare the fields of the tasks both have.
        reasons.append(f"tasks: {len(old_tasks)} there ({_task_names(old_tasks)}), "
                       f"{len(new_tasks)} now ({_task_names(new_tasks)})")
        common = min(len(old_tasks), len(new_tasks))
        stored["tasks"], current["tasks"] = old_tasks[:common], new_tasks[:common]
    old_fields, new_fields = _flatten(stored), _flatten(current)
    keys = old_fields.keys() | new_fields.keys()
    named_off = set()
    for key in sorted(keys):
        off = _option_off_on_one_side(key, old_fields, new_fields)
        if off is not None:
            if off not in named_off:  # once for the option, not for each of its fields
                named_off.add(off)
                before, now = _subtree(stored, off), _subtree(current, off)
                reasons.append(f"{off}: {_shown_option(before)} there, "
                               f"{_shown_option(now)} now")
            continue
        before, now = old_fields.get(key, _DEFAULT), new_fields.get(key, _DEFAULT)
        if {} in (before, now) and any(k.startswith(f"{key}.") for k in keys):
            continue  # `track: {}` against `track: {max_missed: 5}`: set both times
        if before != now:
            reasons.append(f"{key}: {_shown(before)} there, {_shown(now)} now")
    return "; ".join(reasons) or "other inputs or task parameters"


def _option_off_on_one_side(key: str, *sides: dict[str, object]) -> str | None:
    """The option (an OPTIONS_OFF_WHEN_UNSET name, as "tasks.0.track") holding flattened
    `key` that one side leaves out altogether (off there: `track.max_missed` left out is not
    at its default but tracking not done); None for any other key."""
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        if parts[end - 1] in OPTIONS_OFF_WHEN_UNSET:
            option = ".".join(parts[:end])
            present = [any(k == option or k.startswith(f"{option}.") for k in side)
                       for side in sides]
            return option if present.count(True) == 1 else None
    return None


def _subtree(tree, dotted: str):
    """The value at a dotted path of a nested identity ("tasks.0.track"); _DEFAULT if absent."""
    for part in dotted.split("."):
        if isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        elif isinstance(tree, dict) and part in tree:
            tree = tree[part]
        else:
            return _DEFAULT
    return tree


def _same_but_contents(stored: dict | None, current: dict | None) -> bool:
    """Whether a stored identity written before identities held `contents` (the digests of
    the files and captions a job reads) is the current one but for them: the same job, by
    all an older labeler could tell."""
    if not isinstance(stored, dict) or "contents" in stored or not current:
        return False
    return stored == json.loads(json.dumps({k: v for k, v in current.items()
                                            if k != "contents"}))


def _task_names(tasks: list) -> str:
    """The output names of an identity's tasks, as a job names their folders."""
    return ", ".join(str(t.get("name") or t.get("task")) if isinstance(t, dict) else "?"
                     for t in tasks)


def _json_object(data: bytes) -> dict | None:
    """The JSON object `data` holds; None when it holds something else or no JSON."""
    try:
        value = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


_DEFAULT = object()  # a field left out of an identity: at its default


def _shown(value) -> str:
    return "the default" if value is _DEFAULT else repr(value)


def _shown_option(value) -> str:
    if value is _DEFAULT:
        return "off"
    return "on, with its defaults" if value == {} else f"on, {value!r}"


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    """{"tasks": [{"threshold": 0.3}]} -> {"tasks.0.threshold": 0.3}; lists of plain values
    (labels) stay whole, and so does an empty dict (an option set with its defaults:
    `track: {}`)."""
    if isinstance(tree, dict) and tree:
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    flat = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def shard_name(task_name: str, shard: int) -> str:
    """A shard file's path relative to the output root."""
    return f"{task_name}/part-{shard:05d}.parquet"


def shard_file(root: Path, task_name: str, shard: int) -> Path:
    return Path(root) / shard_name(task_name, shard)


@dataclass
class _Arrivals:
    """The rows of one (task, input) that arrived: their part indices, and how many rows the
    input has (None until its last row arrives)."""

    parts: set[int] = field(default_factory=set)
    total: int | None = None

    @property
    def next_part(self) -> int:
        """One past the highest part index that arrived (0: none did)."""
        return max(self.parts) + 1 if self.parts else 0


@dataclass(frozen=True)
class MissingParts:
    """The missing rows of an input: `gaps`, part indices, and every part from `from_part`
    on when its last row has not arrived (None: it has)."""

    gaps: tuple[int, ...]
    from_part: int | None

    def __contains__(self, part: int) -> bool:
        return part in self.gaps or (self.from_part is not None and part >= self.from_part)

    @property
    def known_count(self) -> int:
        """Missing rows counted: the gaps, and the last row when it is missing."""
        return len(self.gaps) + (self.from_part is not None)


class ShardedParquetSink:
    """Collects record tables (with ROUTING_COLUMNS) and commits one file per task and shard.

    root: a local folder or an s3:// prefix. expected: {shard: number of inputs in it};
    task_names: the job's task output names. fingerprint: identifies the job (inputs and
    spec); a rerun must match it, or `legacy_fingerprint()` (what older versions stored
    for the same job, computed only for an output that holds no identity), to resume. identity: what the fingerprint hashes
    (labeler.jobs.identity), stored with it so that a refused rerun can name what differs.
    metadata: columns carried from the inputs to every output row, with `id` and `shard`
    columns (one row per input), or None.
    finalize: {task name: a function of a shard's rows (RECORD_SCHEMA, whole inputs, in id
    then part order) to the rows to write}, for work that needs all of an input's rows at
    once, such as linking a video's boxes into tracks.
    retry_errors: reopen committed shards that hold error rows (`retrying` says which inputs
    of them to label again). dry_run: only read: the same checks and the same pending shards
    and retries, but nothing deleted or written (with overwrite, the output counts as empty).
    Problems reaching the output (no such bucket, refused credentials) raise StorageError.
    """

    def __init__(self, root: str | Path, expected: dict[int, int], task_names: list[str],
                 fingerprint: str, overwrite: bool = False, metadata: pa.Table | None = None,
                 retry_errors: bool = False, dry_run: bool = False, identity: dict | None = None,
                 legacy_fingerprint: Callable[[], str] | None = None,
                 finalize: dict[str, Callable[[pa.Table], pa.Table]] | None = None):
        self.uri = str(root)
        self._finalize = finalize or {}
        self.fs, self.path = filesystem_for(self.uri)
        self.path = self.path.rstrip("/")
        self.s3 = is_s3(self.uri)
        self.expected = expected
        self.task_names = task_names
        self._metadata = _split_by_shard(metadata)
        try:
            # Files --overwrite deletes: counted on a dry run, which deletes nothing.
            self.overwritten_files = 0
            if overwrite and dry_run:
                self.overwritten_files = len(self._list())
            elif overwrite:
                self._delete_all()
            if dry_run and self.s3:  # what the run's first write would find out
                self._check_bucket()
            elif dry_run:
                self._check_local_folder()
            self._existing = set() if overwrite and dry_run else self._list()
            self._check_or_write_manifest(fingerprint, identity, legacy_fingerprint,
                                          write=not dry_run)
            if f"{self.path}/{SUCCESS_FILE}" in self._existing and not dry_run:
                self.fs.delete_file(f"{self.path}/{SUCCESS_FILE}")
        except OSError as err:
            raise storage_error(self.uri, "write the output to", err) from None
        self._buffers: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        # (task, input id) -> which of its rows arrived, for inputs not yet complete
        self._parts: dict[tuple[str, str], _Arrivals] = {}
        self._complete_inputs: dict[tuple[str, int], int] = defaultdict(int)
        # Reopened shards: (task, shard) -> the committed rows kept, as written; and
        # shard -> the ids of its inputs to label again.
        self._retained: dict[tuple[str, int], pa.Table] = {}
        self.retrying: dict[int, set[str]] = {}
        self.files_written: list[str] = []
        if retry_errors:
            try:
                self._reopen_shards_with_errors(keep_rows=not dry_run)
            except OSError as err:
                raise storage_error(self.uri, "read earlier results from", err) from None

    def _check_bucket(self) -> None:
        """FileNotFoundError when the output's bucket does not exist (listing a prefix of a
        missing bucket finds nothing, as if it were empty)."""
        bucket = self.path.split("/", 1)[0]
        if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"bucket does not exist: {bucket!r}")

    def _check_local_folder(self) -> None:
        """OSError when the output folder could not be made: the nearest existing folder on
        its path is a file, or not writable."""
        path = os.path.abspath(self.path)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"{path} is not writable")

    def _list(self) -> set[str]:
        """Paths of every file under the output root now."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True,
                                                        allow_not_found=True))
        return {i.path for i in infos if i.type == pafs.FileType.File}

    def _delete_all(self) -> None:
        # Through a link to a folder too (as export's Target.clear): what the folder it
        # points to holds, not the link.
        path = self.path if self.s3 else os.path.realpath(self.path)
        self.fs.delete_dir_contents(path, missing_dir_ok=True)

    def _check_or_write_manifest(self, fingerprint: str, identity: dict | None,
                                 legacy_fingerprint: Callable[[], str] | None,
                                 write: bool = True) -> None:
        manifest = f"{self.path}/{MANIFEST_FILE}"
        if manifest in self._existing:
            with self.fs.open_input_stream(manifest) as f:
                stored = _json_object(f.read())
            if stored is None:
                raise OutputConflict(
                    f"output {self.uri!r} holds a _job.json that labeler cannot read (not a "
                    f"JSON object); pass --overwrite to replace its contents or choose "
                    f"another output")
            previous = stored.get("fingerprint")
            if previous == fingerprint:
                return
            legacy = ("identity" not in stored and legacy_fingerprint is not None
                      and previous == legacy_fingerprint())
            if not legacy and not _same_but_contents(stored.get("identity"), identity):
                raise OutputConflict(
                    f"output {self.uri!r} holds results of a different job "
                    f"({describe_differences(stored.get('identity'), identity)}); pass "
                    f"--overwrite to replace them or choose another output")
            # The same job, written by an older labeler: store today's identity, so that
            # the next rerun compares field by field (and contents).
        elif self._existing:
            raise OutputConflict(
                f"output {self.uri!r} is not empty and was not written by labeler; "
                f"pass --overwrite to replace its contents or choose another output"
            )
        if write:
            self._put(manifest, json.dumps({"fingerprint": fingerprint, "identity": identity,
                                            "tasks": self.task_names,
                                            "shards": len(self.expected)}, indent=2).encode())

    def _put(self, path: str, data: bytes) -> None:
        """Write a small file whole: staged and renamed locally, one PUT on S3."""
        self._write(path, lambda target: self._stream_write(target, data))

    def _stream_write(self, target: str, data: bytes) -> None:
        with self.fs.open_output_stream(target) as f:
            f.write(data)

    def _write(self, path: str, write) -> None:
        """write(target) fills `target`; `path` appears only complete."""
        if self.s3:
            write(path)  # an S3 object becomes visible only once its upload completes
            return
        folder, _, name = path.rpartition("/")
        self.fs.create_dir(folder, recursive=True)
        # A name of this write's own: a second run writing the same output at once (the
        # same job started twice) must neither truncate this file nor rename it away.
        staging = f"{folder}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(staging)
        except BaseException:
            if os.path.exists(staging):  # named by this write alone: no later one reuses it
                os.unlink(staging)
            raise
        self.fs.move(staging, path)  # rename: atomic, readers see the whole file or none

    def _read_shard(self, task_name: str, shard: int, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(f"{self.path}/{shard_name(task_name, shard)}", columns=columns,
                             filesystem=self.fs)

    def _reopen_shards_with_errors(self, keep_rows: bool = True) -> None:
        """For each shard that every task committed: the ids with an error row in any task.
        Those shards become pending again, their other inputs' rows retained, complete
        (keep_rows False, for a dry run: the ids only, no shard read whole)."""
        for shard in sorted(set(self.expected) - self.pending_shards()):
            failed: set[str] = set()
            for task in self.task_names:
                rows = self._read_shard(task, shard, ["id", "error"])
                failed.update(rows.filter(pc.is_valid(rows.column("error")))
                              .column("id").to_pylist())
            if not failed:
                continue
            self.retrying[shard] = failed
            for task in self.task_names:
                self._existing.discard(f"{self.path}/{shard_name(task, shard)}")
                if not keep_rows:
                    continue
                rows = self._read_shard(task, shard)
                kept = rows.filter(pc.invert(pc.is_in(rows.column("id"),
                                                      value_set=pa.array(sorted(failed)))))
                self._retained[(task, shard)] = kept
                self._complete_inputs[(task, shard)] = len(set(kept.column("id").to_pylist()))

    def committed(self, task_name: str, shard: int) -> bool:
        return f"{self.path}/{shard_name(task_name, shard)}" in self._existing

    def pending_shards(self) -> set[int]:
        """Shards that some task has not committed yet."""
        return {s for s in self.expected
                if not all(self.committed(t, s) for t in self.task_names)}

    def add(self, table: pa.Table) -> None:
        """Buffer a table of records; commit every (task, shard) that is now complete."""
        tasks = table.column("task_name").to_pylist()
        shards = table.column("shard").to_pylist()
        ids = table.column("id").to_pylist()
        parts = table.column("part_index").to_pylist()
        lasts = table.column("last_part").to_pylist()
        # Each (task, shard)'s rows, as runs of consecutive rows [start, end).
        groups: dict[tuple[str, int], list[list[int]]] = defaultdict(list)
        previous = None
        for row, key in enumerate(zip(tasks, shards)):
            if key == previous:
                groups[key][-1][1] = row + 1
            else:
                groups[key].append([row, row + 1])
                previous = key
        touched = set()
        for task, shard, id_, part, last in zip(tasks, shards, ids, parts, lasts):
            state = self._parts.setdefault((task, id_), _Arrivals())
            state.parts.add(part)
            if last:
                state.total = part + 1
            if len(state.parts) == state.total:
                del self._parts[(task, id_)]
                self._complete_inputs[(task, shard)] += 1
                touched.add((task, shard))
        for key, runs in groups.items():
            # One run (a batch of one shard, or one task's rows of it): a slice, no copy
            # (_commit's sort copies the shard's rows anyway). A take costs ~0.5 ms however
            # few its rows (a kernel per column): most of the sink's time per row at small
            # batches. A slice keeps its whole batch until the shard commits: at most one
            # batch more per pending shard.
            if len(runs) == 1:
                (start, end), = runs
                self._buffers[key].append(table.slice(start, end - start))
            else:
                self._buffers[key].append(
                    table.take([row for start, end in runs for row in range(start, end)]))
        for key in touched:
            if self._complete_inputs[key] == self.expected[key[1]]:
                self._commit(*key)

    def incomplete_inputs(self, task_name: str, shard: int, ids: list[str]) -> dict[str, int]:
        """Of a pending shard's input ids, those whose rows have not all arrived, each with
        one past the highest part_index that did: 0 when none did; a video may have lost some
        frames' rows only, anywhere among its parts, and a row standing for them there takes
        this index, which no row of the input has."""
        if self.committed(task_name, shard):
            return {}
        done = self._complete_inputs[(task_name, shard)]
        if done == self.expected[shard]:
            return {}
        arrived = {id_: state.next_part for (task, id_), state in self._parts.items()
                   if task == task_name}
        seen = set()
        for table in self._buffers.get((task_name, shard), []):
            seen.update(table.column("id").to_pylist())
        return {id_: arrived.get(id_, 0) for id_ in ids
                if id_ in arrived or id_ not in seen}

    def missing_parts(self, task_name: str, id_: str) -> MissingParts:
        """Which rows of an input whose rows have not all arrived (incomplete_inputs) are
        missing: all of them when none arrived."""
        state = self._parts.get((task_name, id_))
        if state is None:
            return MissingParts((), 0)
        if state.total is not None:
            return MissingParts(tuple(sorted(set(range(state.total)) - state.parts)), None)
        end = state.next_part
        return MissingParts(tuple(sorted(set(range(end)) - state.parts)), end)

    def add_lost(self, table: pa.Table) -> None:
        """Error rows standing for inputs whose rows never (all) arrived, one per input: each
        completes its input whatever its part counters say, and complete shards commit."""
        for task, shard, id_ in zip(table.column("task_name").to_pylist(),
                                    table.column("shard").to_pylist(),
                                    table.column("id").to_pylist()):
            self._parts.pop((task, id_), None)
            self._complete_inputs[(task, shard)] += 1
            self._buffers[(task, shard)].append(
                table.filter(pc.and_(pc.equal(table.column("task_name"), task),
                                     pc.equal(table.column("id"), id_))))
        for task, shard in {(t, s) for t, s in zip(table.column("task_name").to_pylist(),
                                                   table.column("shard").to_pylist())}:
            if self._complete_inputs[(task, shard)] == self.expected[shard]:
                self._commit(task, shard)

    def _commit(self, task_name: str, shard: int) -> None:
        rows = pa.concat_tables(self._buffers.pop((task_name, shard)))
        rows = rows.sort_by([("id", "ascending"), ("part_index", "ascending")])
        rows = rows.drop_columns(list(ROUTING_COLUMNS)).cast(RECORD_SCHEMA)
        if task_name in self._finalize:
            rows = self._finalize[task_name](rows)
        rows = _with_carried_columns(rows, self._metadata.get(shard))
        retained = self._retained.pop((task_name, shard), None)
        if retained is not None:
            # Both are in file order (by id, then part); a stable sort by id interleaves them
            # and keeps each input's parts in order.
            rows = pa.concat_tables([retained, rows.cast(retained.schema)]).sort_by("id")
        path = f"{self.path}/{shard_name(task_name, shard)}"
        try:
            self._write(path, lambda target: pq.write_table(rows, target, filesystem=self.fs,
                                                            compression="zstd"))
        except OSError as err:
            raise storage_error(self.uri, "write a shard to", err) from None
        self._existing.add(path)
        self.files_written.append(path)

    def finish(self, summary: dict) -> None:
        """Check that every shard was committed, then mark the output complete."""
        if self._buffers or self.pending_shards():
            raise RuntimeError(f"job ended with uncommitted shards: "
                               f"{sorted(self._buffers) or sorted(self.pending_shards())}")
        self._put(f"{self.path}/{SUCCESS_FILE}", json.dumps(summary, indent=2).encode())


def _split_by_shard(metadata: pa.Table | None) -> dict[int, pa.Table]:
    """{shard: its rows of `metadata`, without the shard column}; rows of a shard are
    contiguous (inputs are planned in shard order)."""
    if metadata is None or metadata.num_rows == 0:
        return {}
    shards = metadata.column("shard").to_pylist()
    table = metadata.drop_columns(["shard"])
    out, start = {}, 0
    for i in range(1, len(shards) + 1):
        if i == len(shards) or shards[i] != shards[start]:
            out[shards[start]] = table.slice(start, i - start)
            start = i
    return out


def _with_carried_columns(rows: pa.Table, metadata: pa.Table | None) -> pa.Table:
    """`rows` plus the inputs' carried columns, matched by id (named apart from the record's
    fields when planned: labeler.sources.items.carried_names)."""
    if metadata is None:
        return rows
    index = pc.index_in(rows.column("id"), value_set=metadata.column("id"))
    matched = metadata.take(index)
    for name in metadata.column_names:
        if name == "id":
            continue
        rows = rows.append_column(name, matched.column(name))
    return rows
