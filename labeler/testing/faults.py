"""Fault injection for tests: end a model actor's process the way a segfault in native code
or the kernel's OOM killer ends it (no exception, no cleanup), to exercise the job's bounded
retries of lost batches. Inert unless LABELER_FAULT_CRASH_ON is set in the workers' env."""

from __future__ import annotations

import os
from collections.abc import Iterable

CRASH_ON_ENV = "LABELER_FAULT_CRASH_ON"
# The exit status of a process killed by SIGABRT (128 + 6), what a crashing decoder gives.
CRASH_STATUS = 134


def crash_if_marked(uris: Iterable[str], frame_indices: Iterable[int] | None = None) -> None:
    """Exit this process at once when one of `uris` contains the marker text; with frame
    indices (a video's frame rows), when one of `<uri>#frame=<index>` does (a marker
    `v.mp4#frame=12` is that frame alone)."""
    marker = os.environ.get(CRASH_ON_ENV)
    if not marker:
        return
    names = ([str(uri) for uri in uris] if frame_indices is None else
             [f"{uri}#frame={index}" for uri, index in zip(uris, frame_indices)])
    if any(marker in name for name in names):
        os._exit(CRASH_STATUS)
