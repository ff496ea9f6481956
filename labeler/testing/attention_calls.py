"""Counting torch's fused attention calls, for tests and benchmarks that check how many
attention kernels a model asks for (labeler/models/qwen2_vl_attention.py)."""

from __future__ import annotations

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class CountAttentionCalls(TorchFunctionMode):
    """Counts scaled_dot_product_attention calls made while it is active:
    `with CountAttentionCalls() as counter: ...; counter.calls`."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))
