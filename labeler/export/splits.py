"""Which split an exported image goes to: a fixed function of its id.

An id's split is decided by its hash (blake2b, 64 bits), not by its position or a random
draw: the same id lands in the same split on every export of every job, so a relabeled or
grown dataset keeps its validation images out of training. The share of ids in `val` tends
to `val_fraction` as the ids grow in number (a binomial draw: +-1% at 10,000 images).
"""

from __future__ import annotations

import hashlib

TRAIN, VAL = "train", "val"


def split_of(row_id: str, val_fraction: float) -> str:
    """TRAIN or VAL for `row_id`; val_fraction in [0, 1)."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8).digest()
    return VAL if int.from_bytes(digest, "big") < val_fraction * 2**64 else TRAIN
