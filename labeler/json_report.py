"""The `--json FILE` of the commands that print figures (`labeler stats`, `labeler eval`):
the path checked before any work (also for eval's --worst-ids), and the figures written
after."""

from __future__ import annotations

import json
from pathlib import Path

from labeler.config import SpecError
from labeler.storage import is_s3


def check_report_path(path: str, error: type[SpecError], flag: str = "--json") -> None:
    """Raise `error` unless `path` (given by `flag`) names a file that can be written in an
    existing local folder (checked up front, so a long computation does not end in a failed
    write)."""
    local = Path(path)
    if is_s3(path) or local.is_dir() or not local.parent.is_dir():
        raise error(f"{flag} {path!r}: a file to write in an existing local folder")


def write_report(path: str, figures: dict, error: type[SpecError]) -> None:
    """The figures as indented UTF-8 JSON at `path`; `error` naming the OS's reason."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2, ensure_ascii=False)
    except OSError as err:
        raise error(f"cannot write --json {path!r}: {err}") from None
