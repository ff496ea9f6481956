"""Qwen2-VL's vision attention with one attention call per run of equal-size images.

transformers packs a batch's patches into one sequence of (sum of patches, channels) and,
unless flash attention is installed, attends image by image: every layer splits the
sequence with `cu_seqlens.tolist()` (a device sync) and calls the attention function once
per image (once per frame pair of a clip). At batch 128 that is 128 calls in each of the 32
layers, each with its own Python and kernel-launch cost, and 32 syncs a forward.

`batch_vision_attention` swaps each layer's attention for `RunBatchedVisionAttention`,
which reads the segment lengths once per forward (the first layer's; the others see the
same `cu_seqlens` tensor) and attends each run of consecutive equal-length segments in one
call, the run laid out as a batch: (count, heads, length, head_dim). A batch of equal-size
images, as a job of one camera or the benchmark gives, is one run: one call a layer.
Segments attend only to themselves either way, so the result is the per-image one (float32
within 1e-5, tests/models/test_qwen2_vl_attention.py).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen


def segment_runs(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """Cumulative segment ends (n + 1,), starting at 0 -> runs of consecutive segments of
    equal length, as (length, count) in order; e.g. [0, 4, 8, 11] -> [(4, 2), (3, 1)]."""
    runs: list[tuple[int, int]] = []
    for length in torch.diff(cu_seqlens).tolist():
        if runs and runs[-1][0] == length:
            runs[-1] = (length, runs[-1][1] + 1)
        else:
            runs.append((length, 1))
    return runs


class SegmentRunsCache:
    """The runs of the forward in progress, shared by a tower's layers: keyed by the
    `cu_seqlens` tensor itself, which the tower hands every layer. The pair is replaced
    whole, so a thread reading it never sees one batch's tensor with another's runs."""

    def __init__(self) -> None:
        self.last: tuple[torch.Tensor, list[tuple[int, int]]] | None = None

    def runs(self, cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
        last = self.last
        if last is not None and last[0] is cu_seqlens:
            return last[1]
        runs = segment_runs(cu_seqlens)
        self.last = (cu_seqlens, runs)
        return runs


class RunBatchedVisionAttention(qwen.VisionAttention):
    """transformers' VisionAttention whose non-flash path attends a run of equal-length
    segments in one call. Set `runs_cache` (a SegmentRunsCache shared by the tower) before
    use; batch_vision_attention does."""

    runs_cache: SegmentRunsCache

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                max_seqlen: int | None = None, **kwargs) -> torch.Tensor:
        """hidden_states (S, dim) for S patches of the batch; cu_seqlens (n + 1,) ends of its
        n segments -> (S, dim)."""
        # The names the model's own module uses, so that a registered attention function
        # or a newer transformers applies here as it does there.
        if qwen.is_flash_attention_requested(self.config):  # varlen kernels already do one call
            return super().forward(hidden_states, cu_seqlens, position_embeddings,
                                   max_seqlen=max_seqlen, **kwargs)
        seq_length = hidden_states.shape[0]
        # (S, 3 * dim) -> q, k, v (S, heads, head_dim), as transformers computes them.
        query, key, value = (self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1)
                             .permute(1, 0, 2, 3).unbind(0))
        cos, sin = position_embeddings
        query, key = qwen.apply_rotary_pos_emb_vision(query, key, cos, sin)
        attention = qwen.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, qwen.eager_attention_forward)
        outputs, start = [], 0
        for length, count in self.runs_cache.runs(cu_seqlens):
            end = start + length * count
            # (length * count, heads, head_dim) -> (count, heads, length, head_dim)
            q, k, v = (t[start:end].unflatten(0, (count, length)).transpose(1, 2)
                       for t in (query, key, value))
            out, _ = attention(self, q, k, v, attention_mask=None, scaling=self.scaling,
                               dropout=0.0 if not self.training else self.attention_dropout,
                               is_causal=False, **kwargs)
            outputs.append(out.reshape(length * count, -1))  # out: (count, length, heads, hd)
            start = end
        return self.proj(torch.cat(outputs) if len(outputs) > 1 else outputs[0])


def batch_vision_attention(visual: nn.Module) -> int:
    """Swap the attention of every block of a Qwen2-VL vision tower (model.model.visual) for
    RunBatchedVisionAttention, in place (same parameters, same state dict) -> blocks swapped."""
    cache = SegmentRunsCache()
    swapped = 0
    for block in visual.blocks:
        block.attn.__class__ = RunBatchedVisionAttention
        block.attn.runs_cache = cache
        swapped += 1
    return swapped
