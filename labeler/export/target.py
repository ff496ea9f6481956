"""Where an export writes: a local folder or an s3:// prefix (pyarrow file systems from
labeler.storage).

An export starts only into an empty (or missing) location; `clear` empties it for
--overwrite, and refuses to when that would delete the job output being exported. Files are
written whole; the export's main file (annotations.json, data.yaml) is written last through
`final`, staged under a dot-name and renamed locally, uploaded under its name on S3 (an
object appears only once its upload completes), so a location without it holds an
interrupted export.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pyarrow as pa
import pyarrow.fs as pafs

from labeler.export.rows import ExportError
from labeler.storage import (comparable_path, filesystem_for, is_s3, path_within,
                             storage_error)


class Target:
    """The output location `uri`; paths given to its methods are relative to it, '/'-separated."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, path = filesystem_for(self.uri)
        self.path = path.rstrip("/")
        self.s3 = is_s3(self.uri)
        try:
            info = self.fs.get_file_info(self.path)
            self.empty = info.type == pafs.FileType.NotFound or (
                info.type == pafs.FileType.Directory
                and not self.fs.get_file_info(pafs.FileSelector(self.path)))
        except OSError as err:
            raise storage_error(self.uri, "look at the export output", err) from None
        if info.type == pafs.FileType.File:
            raise ExportError(f"--out {self.uri!r} is a file; give a folder or an s3:// prefix")

    def check_outside(self, job_uri: str) -> None:
        """Refuse the job output itself or a folder inside it: what is written there would
        read as part of the job (a task folder to its readers, files `labeler track` copies),
        and --overwrite would delete the job's files."""
        out, job = comparable_path(self.uri), comparable_path(job_uri)
        if is_s3(job_uri) == self.s3 and path_within(out, job):
            where = "is" if out == job else "is inside"
            raise ExportError(f"--out {self.uri!r} {where} the job output {job_uri!r}: choose "
                              f"a folder outside it")

    def check_empty(self, overwrite: bool, job_uri: str) -> None:
        """Refuse a location inside the job output (check_outside), a non-empty one unless
        `overwrite`, and never one holding the job."""
        self.check_outside(job_uri)
        if self.empty:
            return
        if not overwrite:
            raise ExportError(f"--out {self.uri!r} is not empty; pass --overwrite to replace "
                              f"its contents or choose another folder")
        if is_s3(job_uri) == self.s3 and path_within(comparable_path(job_uri),
                                                     comparable_path(self.uri)):
            raise ExportError(f"--out {self.uri!r} holds the job output {job_uri!r}; "
                              f"--overwrite would delete it: choose another folder")

    def clear(self) -> None:
        """Delete everything under the location (check_empty allowed it)."""
        if not self.empty:
            # A local --out that is a link to a folder: pyarrow empties nothing through the
            # link, and says nothing; the folder it points to is emptied.
            path = self.path if self.s3 else os.path.realpath(self.path)
            try:
                self.fs.delete_dir_contents(path, missing_dir_ok=True)
            except OSError as err:
                raise storage_error(self.uri, "empty", err) from None

    def location(self, relative: str) -> str:
        """The URI (or local path) of `relative`, under --out as given (as the other commands
        print their output)."""
        return f"{self.uri}/{relative}"

    def _parent(self, full: str) -> None:
        if not self.s3:  # S3 has no folders; a "folder" object would only add a request
            self.fs.create_dir(full.rpartition("/")[0], recursive=True)

    def write(self, relative: str, data: bytes) -> None:
        """Write a whole file (safe from several threads)."""
        full = f"{self.path}/{relative}"
        try:
            self._parent(full)
            with self.fs.open_output_stream(full) as f:
                f.write(data)
        except OSError as err:
            raise storage_error(self.uri, f"write {relative} to", err) from None

    @contextmanager
    def final(self, relative: str) -> Iterator[pa.NativeFile]:
        """A binary stream for the export's main file; it appears only once complete."""
        full = f"{self.path}/{relative}"
        folder, _, name = full.rpartition("/")
        staging = full if self.s3 else f"{folder}/.{name}.tmp"
        try:
            self._parent(full)
            stream = self.fs.open_output_stream(staging)
            try:
                yield stream
            except BaseException:
                # An export stopped part-way (an error, Ctrl-C) leaves no main file: closing
                # an S3 stream completes its upload, so what it wrote is deleted again.
                with suppress(OSError):
                    stream.close()
                with suppress(OSError):
                    self.fs.delete_file(staging)
                raise
            stream.close()
            if staging != full:
                self.fs.move(staging, full)
        except OSError as err:
            raise storage_error(self.uri, f"write {relative} to", err) from None

