"""Seeded weight perturbation for tiny random checkpoints.

Freshly initialised transformers give (nearly) the same output for every input: generation
stops or repeats at once and detectors score every box alike, so a batched-vs-single test
would compare constants. Seeded noise on every parameter makes outputs input-dependent.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def perturb_weights(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Add N(0, std) noise to every floating-point parameter, in place, deterministically."""
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if param.dtype.is_floating_point:
            param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)
