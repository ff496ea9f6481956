"""Parquet sink with deterministic file names, write-then-commit, and resume.

Layout under the output root:

    <task_name>/part-00000.parquet   rows of input shard 0 (inputs 0..files_per_shard-1)
    _job.json                         what the output holds: inputs, tasks, spec fingerprint
    _SUCCESS                          written last, with the job summary

A shard file is written under a dot-name and renamed into place only when every row of the
shard has arrived, so a crashed run never leaves a partial file that reads as results (files
starting with '.' or '_' are ignored by pyarrow's dataset discovery). On a rerun with the
same spec, committed shards are skipped: only the missing inputs are labeled.

Ray Data's own `write_parquet` names files by block and write task, not by input shard, and
has no commit per group of inputs; so the driver, which sees every (small) record anyway for
the progress bar, writes the files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.schemas import RECORD_SCHEMA


class OutputConflict(RuntimeError):
    """The output folder holds the results of a different job."""


def shard_file(root: Path, task_name: str, shard: int) -> Path:
    return root / task_name / f"part-{shard:05d}.parquet"


class ShardedParquetSink:
    """Collects record tables (with a `shard` column) and commits one file per task and shard.

    expected: {shard: number of inputs in it}; task_names: the job's task output names.
    fingerprint: identifies the job (inputs and spec); a rerun must match it to resume.
    """

    def __init__(self, root: str | Path, expected: dict[int, int], task_names: list[str],
                 fingerprint: str, overwrite: bool = False):
        self.root = Path(root)
        self.expected = expected
        self.task_names = task_names
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)
        self._check_or_write_manifest(fingerprint)
        (self.root / "_SUCCESS").unlink(missing_ok=True)
        self._buffers: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        self._counts: dict[tuple[str, int], int] = defaultdict(int)
        self.files_written: list[Path] = []

    def _check_or_write_manifest(self, fingerprint: str) -> None:
        manifest = self.root / "_job.json"
        if manifest.exists():
            previous = json.loads(manifest.read_text()).get("fingerprint")
            if previous != fingerprint:
                raise OutputConflict(
                    f"output {str(self.root)!r} holds results of a different job (other inputs "
                    f"or task parameters); pass --overwrite to replace them or choose another output"
                )
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise OutputConflict(
                f"output {str(self.root)!r} is not empty and was not written by labeler; "
                f"pass --overwrite to replace its contents or choose another output"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"fingerprint": fingerprint, "tasks": self.task_names,
                                        "shards": len(self.expected)}, indent=2))

    def committed(self, task_name: str, shard: int) -> bool:
        return shard_file(self.root, task_name, shard).exists()

    def pending_shards(self) -> set[int]:
        """Shards that some task has not committed yet."""
        return {s for s in self.expected
                if not all(self.committed(t, s) for t in self.task_names)}

    def add(self, table: pa.Table) -> None:
        """Buffer a table of records; commit every (task, shard) that is now complete."""
        tasks = table.column("task_name").to_pylist()
        shards = table.column("shard").to_pylist()
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for row, key in enumerate(zip(tasks, shards)):
            groups[key].append(row)
        for key, rows in groups.items():
            self._buffers[key].append(table.take(rows))
            self._counts[key] += len(rows)
            if self._counts[key] == self.expected[key[1]]:
                self._commit(*key)

    def _commit(self, task_name: str, shard: int) -> None:
        rows = pa.concat_tables(self._buffers.pop((task_name, shard)))
        rows = rows.drop_columns(["shard"]).sort_by("id").cast(RECORD_SCHEMA)
        final = shard_file(self.root, task_name, shard)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".{final.name}.tmp")
        pq.write_table(rows, staging, compression="zstd")
        os.replace(staging, final)  # atomic: readers see the whole file or none
        self.files_written.append(final)

    def finish(self, summary: dict) -> None:
        """Check that every shard was committed, then mark the output complete."""
        incomplete = {k: v for k, v in self._counts.items() if k in self._buffers}
        if incomplete or self.pending_shards():
            raise RuntimeError(f"job ended with uncommitted shards: {sorted(incomplete) or sorted(self.pending_shards())}")
        (self.root / "_SUCCESS").write_text(json.dumps(summary, indent=2))
