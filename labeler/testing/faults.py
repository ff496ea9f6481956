"""Fault injection for tests: end a model actor's process the way a segfault in native code
or the kernel's OOM killer ends it (no exception, no cleanup), to exercise the job's bounded
retries of lost batches. Inert unless LABELER_FAULT_CRASH_ON is set in the workers' env."""

from __future__ import annotations

import os
from collections.abc import Iterable

CRASH_ON_ENV = "LABELER_FAULT_CRASH_ON"
# The exit status of a process killed by SIGABRT (128 + 6), what a crashing decoder gives.
CRASH_STATUS = 134


def crash_if_marked(uris: Iterable[str]) -> None:
    """Exit this process at once when one of `uris` contains the marker text."""
    marker = os.environ.get(CRASH_ON_ENV)
    if marker and any(marker in str(uri) for uri in uris):
        os._exit(CRASH_STATUS)
