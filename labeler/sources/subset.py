"""A reproducible random subset of a job's inputs (`input.subset`): try thresholds, prompts
and batch sizes on a few hundred inputs before labeling millions.

An input is chosen by a hash of its id and the seed, never by where it is listed, so that a
subset:
- is spread over every folder, tar shard and manifest, as a random sample is (the first N
  files of a sorted listing are often one camera or one day);
- is the same on every run and every machine (a job's identity, and its resume, hold);
- grows without reshuffling: a larger count or fraction with the same seed holds every input
  of the smaller one (count 100 is inside count 1000, fraction 0.01 inside 0.1).
"""

from __future__ import annotations

import hashlib
import heapq

# 64 bits of the digest as a fraction of 2**64: uniform in [0, 1).
_KEY_SCALE = float(2**64)


def subset_key(input_id: str, seed: int) -> float:
    """Where an input falls in [0, 1) for `seed`: the subset is the inputs of lowest key."""
    digest = hashlib.blake2b(f"{seed}\0{input_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _KEY_SCALE


def choose_subset(ids: list[str], *, count: int | None = None, fraction: float | None = None,
                  seed: int = 0) -> list[int]:
    """The positions in `ids` of the subset, in listing order: the `count` inputs of lowest
    key (all of them when there are fewer), or each input whose key is below `fraction`
    (about that share of them; exactly the same inputs whatever else is listed). Give one of
    count and fraction."""
    if (count is None) == (fraction is None):
        raise ValueError("give one of count and fraction")
    keys = [subset_key(input_id, seed) for input_id in ids]
    if fraction is not None:
        return [k for k, key in enumerate(keys) if key < fraction]
    # Ties of 64-bit keys are as good as impossible; the id decides them anyway.
    chosen = heapq.nsmallest(count, range(len(ids)), key=lambda k: (keys[k], ids[k]))
    return sorted(chosen)
