"""Tiny offline checkpoints for tests, the demo and CPU benchmarks.

Every family has a recipe module `labeler.testing.tiny_<family>` with
`build(out_dir: Path, seed: int = 0, **options) -> Path` that builds a tiny model from the
family's real config classes, with a processor and a tokenizer trained offline, and saves it
with `save_pretrained` (safetensors) so that `from_pretrained(out_dir)` loads it back with
HF_HUB_OFFLINE=1. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

FAMILIES = ("owlv2", "florence2", "blip2", "qwen2_vl", "ovis2")


def build_tiny_model(family: str, out_dir: str | Path, seed: int = 0, **options) -> Path:
    """Build one family's tiny checkpoint into `out_dir`; returns the folder."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    recipe = importlib.import_module(f"labeler.testing.tiny_{family}")
    return recipe.build(Path(out_dir), seed=seed, **options)


def build_tiny_models(root: str | Path, families: tuple[str, ...] = FAMILIES) -> dict[str, Path]:
    """Build `root/<family>` for each family; returns {family: folder}."""
    root = Path(root)
    return {family: build_tiny_model(family, root / family) for family in families}
