"""Qwen2-VL's vision attention by runs (labeler/models/qwen2_vl_attention.py) against
transformers' image-by-image attention, in bf16 on CUDA with SDPA's GPU kernels: batching a
run's images changes no image's attention, so the towers agree within bf16 rounding. Bound
as tests/gpu/test_florence2_compile_cuda.py: 5% of the output's largest magnitude plus 5%
of each element. Float32 on CPU within 1e-5: tests/models/test_qwen2_vl_attention.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from labeler.models.qwen2_vl_attention import batch_vision_attention
from labeler.testing.attention_calls import CountAttentionCalls

pytestmark = pytest.mark.gpu

RELATIVE_TOLERANCE = 0.05
# Four blocks of the 2B's tower at a quarter of its width: real kernels, seconds to build.
CONFIG = dict(depth=4, embed_dim=320, num_heads=4, mlp_ratio=4, hidden_size=384,
              patch_size=14, spatial_merge_size=2, temporal_patch_size=2)


@pytest.mark.parametrize("grids", [[(1, 32, 32)] * 8, [(1, 32, 32), (1, 24, 32)] * 4],
                         ids=["equal", "square-and-4:3"])
def test_runs_match_transformers_in_bf16(grids):
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    config = Qwen2VLVisionConfig(**CONFIG)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        original = Qwen2VisionTransformerPretrainedModel(config).to(torch.bfloat16).eval()
    batched = copy.deepcopy(original)
    batch_vision_attention(batched)
    channels = config.in_channels * config.temporal_patch_size * config.patch_size ** 2
    patches = sum(t * h * w for t, h, w in grids)
    pixels = torch.randn(patches, channels, device="cuda", dtype=torch.bfloat16)
    grid = torch.tensor(grids, device="cuda")
    with torch.inference_mode():
        expected = original(pixels, grid_thw=grid)
        with CountAttentionCalls() as counter:
            got = batched(pixels, grid_thw=grid)
    assert counter.calls == config.depth * len(set(h * w for _, h, w in grids))
    for name in ("last_hidden_state", "pooler_output"):
        ours, theirs = getattr(got, name).float(), getattr(expected, name).float()
        assert ours.shape == theirs.shape
        bound = RELATIVE_TOLERANCE * (theirs.abs().max() + theirs.abs())
        assert ((ours - theirs).abs() <= bound).all(), name
