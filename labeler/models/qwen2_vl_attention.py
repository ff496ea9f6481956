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

Only the segment length (patches of one temporal patch) matters, so a landscape and a
portrait photo of one size share a run. A batch of other sizes in no order (square and 4:3
photos alternating) would make a run of almost every image, so the tower puts equal lengths
side by side first (`grouped_forward`): the images' patches are gathered in order of
segment length, the tower runs, and its outputs are put back in the batch's order, three
copies a forward in all. Each image keeps its own patches, grid and positions: only the
order of work changes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen


def runs_of(lengths: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive equal values, as (value, count) in order; e.g. [4, 4, 3] ->
    [(4, 2), (3, 1)]."""
    runs: list[tuple[int, int]] = []
    for length in lengths:
        if runs and runs[-1][0] == length:
            runs[-1] = (length, runs[-1][1] + 1)
        else:
            runs.append((length, 1))
    return runs


def segment_runs(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """Cumulative segment ends (n + 1,), starting at 0 -> runs of consecutive segments of
    equal length, as (length, count) in order; e.g. [0, 4, 8, 11] -> [(4, 2), (3, 1)]."""
    return runs_of(torch.diff(cu_seqlens).tolist())


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


def size_grouping(grid_thw: list[list[int]]) -> list[int] | None:
    """Images' (t, h, w) patch grids -> an order of the images that puts equal segment lengths
    (h * w: a segment is one temporal patch) side by side, stable; None when the batch's
    order already does."""
    lengths = [h * w for _, h, w in grid_thw]
    if len(runs_of(lengths)) == len(set(lengths)):
        return None
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def token_order(sizes: list[int], order: list[int]) -> np.ndarray:
    """Rows of a packed sequence whose items have `sizes` rows each, item by item in `order`:
    the gather that packs the items in that order."""
    sizes = np.asarray(sizes)
    starts = np.cumsum(sizes) - sizes  # where each item begins in the packed sequence
    counts = sizes[order]
    # Row r of the gather lies in the item placed at position p: its source row is r shifted
    # by (where p begins in the output - where its item begins in the input).
    shift = np.repeat((np.cumsum(counts) - counts) - starts[order], counts)
    return np.arange(int(counts.sum())) - shift


# Keyword arguments of the tower's forward tied to the order of the batch's patches.
_IN_BATCH_ORDER = ("output_hidden_states", "output_attentions", "position_ids", "cu_seqlens")


def grouped_forward(forward, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
    """A Qwen2-VL vision tower's `forward` (bound) run on the batch's images in
    size_grouping's order, its output in the batch's: hidden_states (S, C*2*14*14) packed
    patches, grid_thw (n, 3) -> transformers' output, last_hidden_state (S, embed_dim) and
    pooler_output (S / merge**2, hidden)."""
    grids = grid_thw.tolist()  # one sync a forward; transformers' own makes more
    order = size_grouping(grids)
    # Per-layer outputs, or positions and lengths a caller computed for the batch's order,
    # would come back in the grouped order: those forwards run as they are.
    if order is None or any(kwargs.get(name) is not None for name in _IN_BATCH_ORDER):
        return forward(hidden_states, grid_thw, **kwargs)
    patches = [t * h * w for t, h, w in grids]
    merged = [p // forward.__self__.spatial_merge_size ** 2 for p in patches]
    device = hidden_states.device
    gather = torch.from_numpy(token_order(patches, order)).to(device)
    gather_merged = torch.from_numpy(token_order(merged, order)).to(device)
    out = forward(hidden_states[gather], grid_thw[torch.tensor(order, device=grid_thw.device)],
                  **kwargs)
    # Row k of the grouped output is row gather[k] of the batch's.
    out.last_hidden_state = torch.empty_like(out.last_hidden_state).index_copy_(
        0, gather, out.last_hidden_state)
    out.pooler_output = torch.empty_like(out.pooler_output).index_copy_(
        0, gather_merged, out.pooler_output)
    return out


def batch_vision_attention(visual: nn.Module) -> int:
    """Swap the attention of every block of a Qwen2-VL vision tower (model.model.visual) for
    RunBatchedVisionAttention, in place (same parameters, same state dict), and make the
    tower group equal sizes (grouped_forward) -> blocks swapped."""
    cache = SegmentRunsCache()
    swapped = 0
    for block in visual.blocks:
        block.attn.__class__ = RunBatchedVisionAttention
        block.attn.runs_cache = cache
        swapped += 1
    # An instance attribute, which nn.Module.__call__ calls in place of the class's forward.
    # The tower keeps its class: transformers finds what a model can record (output_...)
    # by the model's class name. A deepcopy binds the copy's own forward.
    visual.forward = functools.partial(grouped_forward, visual.forward)
    return swapped
