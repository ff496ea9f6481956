"""Curated vocabulary: class names given inline and/or in a file (local path or s3://).

Names are stripped; blank entries and repeats are dropped, repeats compared
case-insensitively ("Dog" after "dog") with the first spelling kept. What was dropped is
counted, so the job can report it, and logged in one warning line.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Hex digits of the names' sha256 stored in each row's parameters: 48 bits tell vocabularies
# apart (a collision needs ~16M of them) in 12 characters per row.
DIGEST_CHARS = 12
# Dropped repeats named in the warning line; the count says how many more there were.
SHOWN_DUPLICATES = 5


@dataclass(frozen=True)
class Vocabulary:
    """names: the class names kept, in order of first appearance (inline names first);
    blanks: blank entries dropped; duplicates: the repeated entries dropped, as written."""

    names: tuple[str, ...]
    blanks: int = 0
    duplicates: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """A short sha256 of the names (one a line): the vocabulary's identity in a row."""
        text = "\n".join(self.names).encode("utf-8")
        return hashlib.sha256(text).hexdigest()[:DIGEST_CHARS]

    def dropped(self) -> str | None:
        """One line saying what was dropped, None when nothing was."""
        if not self.blanks and not self.duplicates:
            return None
        parts = []
        if self.blanks:
            parts.append(f"{self.blanks} blank {'entry' if self.blanks == 1 else 'entries'}")
        if self.duplicates:
            shown = ", ".join(repr(d) for d in self.duplicates[:SHOWN_DUPLICATES])
            more = len(self.duplicates) - SHOWN_DUPLICATES
            shown += f" and {more} more" if more > 0 else ""
            parts.append(f"{len(self.duplicates)} "
                         f"{'duplicate' if len(self.duplicates) == 1 else 'duplicates'} ({shown})")
        return f"vocabulary: dropped {' and '.join(parts)}; {len(self.names)} names kept"


def clean_names(entries: Iterable[str]) -> Vocabulary:
    """Raw entries (inline names, file lines) -> Vocabulary (see the module docstring)."""
    names: dict[str, str] = {}  # casefolded -> first spelling
    blanks, duplicates = 0, []
    for entry in entries:
        name = entry.strip()
        if not name:
            blanks += 1
        elif name.casefold() in names:
            duplicates.append(name)
        else:
            names[name.casefold()] = name
    return Vocabulary(tuple(names.values()), blanks, tuple(duplicates))


def read_names(uri: str) -> list[str]:
    """A vocabulary file's lines (UTF-8, a BOM allowed), from a local path or s3:// URI."""
    from labeler.storage import read_bytes

    return read_bytes(uri).decode("utf-8-sig").splitlines()


def load_vocabulary(names: Iterable[str] = (), path: str | None = None) -> Vocabulary:
    """Inline names, then the file's lines when a path is given, cleaned; logs one warning
    line when anything was dropped."""
    entries = list(names) + (read_names(path) if path else [])
    vocabulary = clean_names(entries)
    message = vocabulary.dropped()
    if message:
        log.warning(message)
    return vocabulary
