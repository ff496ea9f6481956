"""Qwen2-VL's vision attention by runs of equal-size images (qwen2_vl_attention) against
transformers' own, image by image, on the same tiny checkpoint: the issue's float32 parity
within 1e-5, and one attention call a layer for a batch of equal-size images."""

import copy

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.qwen2_vl import Qwen2VLCaption
from labeler.models.qwen2_vl_attention import (
    RunBatchedVisionAttention,
    SegmentRunsCache,
    batch_vision_attention,
    segment_runs,
    size_grouping,
    token_order,
)
from labeler.testing.attention_calls import CountAttentionCalls

TOLERANCE = 1e-5
EQUAL = [(56, 56)] * 4
# Three sizes, one of them apart from its like: grouped into 3 runs (16, 24 and 48 patches).
MIXED = [(56, 56), (56, 56), (84, 56), (56, 56), (112, 84)]


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("qwen2_vl")


@pytest.fixture(scope="module")
def processor(model_dir):
    return AutoProcessor.from_pretrained(model_dir)


def _models(model_dir, attn_implementation):
    """(transformers' model, a copy with its vision attention batched by runs)."""
    original = Qwen2VLForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation=attn_implementation).eval()
    batched = copy.deepcopy(original)
    assert batch_vision_attention(batched.model.visual) == len(batched.model.visual.blocks)
    return original, batched


def _pixels(processor, sizes, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    return processor.image_processor(images=images, return_tensors="pt")


def _vision(model, inputs, grid="image_grid_thw", pixels="pixel_values"):
    """The vision tower's output, with the scaled_dot_product_attention calls it made."""
    with torch.inference_mode(), CountAttentionCalls() as counter:
        out = model.model.visual(inputs[pixels], grid_thw=inputs[grid])
    return out, counter.calls


def _difference(got, expected) -> float:
    """Largest difference of the last hidden states (patches of the batch, embed_dim) and of
    the merged features the language model reads (merged patches, hidden)."""
    assert got.last_hidden_state.shape == expected.last_hidden_state.shape
    assert got.pooler_output.shape == expected.pooler_output.shape
    return max((got.last_hidden_state - expected.last_hidden_state).abs().max().item(),
               (got.pooler_output - expected.pooler_output).abs().max().item())


def test_segment_runs_group_consecutive_equal_lengths():
    assert segment_runs(torch.tensor([0, 4, 8, 11])) == [(4, 2), (3, 1)]
    assert segment_runs(torch.tensor([0, 5, 10, 15])) == [(5, 3)]
    assert segment_runs(torch.tensor([0, 2, 5, 7])) == [(2, 1), (3, 1), (2, 1)]
    assert segment_runs(torch.tensor([0])) == []


def test_the_runs_cache_answers_for_the_tensor_it_was_given():
    cache = SegmentRunsCache()
    first, second = torch.tensor([0, 4, 8]), torch.tensor([0, 4, 7])
    assert cache.runs(first) == [(4, 2)]
    assert cache.runs(second) == [(4, 1), (3, 1)]
    # A new tensor with the first's values is a new batch: computed, not mistaken for second.
    assert cache.runs(torch.tensor([0, 4, 8])) == [(4, 2)]


def test_size_grouping_puts_equal_segment_lengths_side_by_side():
    # (t, h, w): segments are h * w; a clip (t = 2) of 4x4 groups with 4x4 images.
    assert size_grouping([[1, 4, 4], [1, 4, 4], [1, 6, 4]]) is None  # already grouped
    assert size_grouping([[1, 4, 4], [1, 6, 4], [2, 4, 4], [1, 8, 6]]) == [0, 2, 1, 3]
    assert size_grouping([[1, 6, 4], [1, 4, 6], [1, 4, 4]]) is None  # 24, 24, 16
    assert size_grouping([]) is None


def test_token_order_gathers_items_whole():
    assert token_order([2, 3, 1], [2, 0, 1]).tolist() == [5, 0, 1, 2, 3, 4]
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 20, 50).tolist()
    order = rng.permutation(50).tolist()
    starts = np.cumsum([0] + sizes)
    expected = [row for i in order for row in range(starts[i], starts[i] + sizes[i])]
    assert token_order(sizes, order).tolist() == expected


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("sizes", [EQUAL, MIXED], ids=["equal", "mixed"])
def test_vision_tower_equals_transformers_within_float32_tolerance(
        model_dir, processor, attn_implementation, sizes):
    original, batched = _models(model_dir, attn_implementation)
    inputs = _pixels(processor, sizes)
    expected, _ = _vision(original, inputs)
    got, _ = _vision(batched, inputs)
    assert _difference(got, expected) <= TOLERANCE


@pytest.mark.parametrize("sizes, runs", [(EQUAL, 1), (MIXED, 3)], ids=["equal", "mixed"])
def test_one_attention_call_per_layer_and_run(model_dir, processor, sizes, runs):
    original, batched = _models(model_dir, "sdpa")
    inputs = _pixels(processor, sizes)
    depth = len(batched.model.visual.blocks)
    assert _vision(original, inputs)[1] == depth * len(sizes)  # transformers: one an image
    assert _vision(batched, inputs)[1] == depth * runs


def test_clips_attend_frame_pair_by_frame_pair_in_one_call(model_dir, processor):
    """A clip's segments are its frame pairs (temporal patches): 4 frames of 56x56 are 2
    equal segments, attended together, as transformers attends them one by one."""
    original, batched = _models(model_dir, "sdpa")
    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8) for _ in range(2)]
    inputs = processor.video_processor(videos=clips, do_sample_frames=False,
                                       return_tensors="pt")
    assert inputs["video_grid_thw"][:, 0].tolist() == [2, 2]
    expected, expected_calls = _vision(original, inputs, "video_grid_thw", "pixel_values_videos")
    got, calls = _vision(batched, inputs, "video_grid_thw", "pixel_values_videos")
    assert _difference(got, expected) <= TOLERANCE
    depth = len(batched.model.visual.blocks)
    assert (expected_calls, calls) == (depth * 4, depth)


def test_the_adapter_batches_vision_attention_with_the_same_log_probabilities(model_dir,
                                                                              processor):
    """Qwen2-VL adapters swap the tower and its attention at setup; a generate over images of
    mixed sizes (regrouped inside the tower) scores every step as transformers' model does."""
    spec = TaskSpec(task="caption", model={"family": "qwen2_vl", "source": model_dir},
                    generation={"max_new_tokens": 6})
    adapter = Qwen2VLCaption(spec)
    adapter.setup(torch.device("cpu"))
    visual = adapter.model.model.visual
    assert all(isinstance(block.attn, RunBatchedVisionAttention) for block in visual.blocks)
    rng = np.random.default_rng(2)
    images = [ImageInput(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), w, h)
              for w, h in MIXED]
    inputs = adapter.preprocess(images)
    with torch.inference_mode(), CountAttentionCalls() as counter:  # grouped: 3 sizes
        visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    assert counter.calls == len(visual.blocks) * 3
    original = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        ours = adapter.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                      output_scores=True, return_dict_in_generate=True)
        theirs = original.generate(**inputs, max_new_tokens=6, do_sample=False,
                                   output_scores=True, return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    for mine, reference in zip(ours.scores, theirs.scores):
        assert torch.allclose(mine.log_softmax(-1), reference.log_softmax(-1), atol=TOLERANCE)


def test_per_layer_outputs_keep_the_batch_order(model_dir, processor):
    """Asked for every layer's hidden states, the tower does not regroup (they would come
    back in the grouped order): the same outputs as transformers', runs as they come."""
    original, batched = _models(model_dir, "sdpa")
    inputs = _pixels(processor, MIXED)
    with torch.inference_mode():
        with CountAttentionCalls() as counter:
            got = batched.model.visual(inputs["pixel_values"],
                                       grid_thw=inputs["image_grid_thw"],
                                       output_hidden_states=True)
        expected = original.model.visual(inputs["pixel_values"],
                                         grid_thw=inputs["image_grid_thw"],
                                         output_hidden_states=True)
    assert counter.calls == len(batched.model.visual.blocks) * 4  # runs 16x2, 24, 16, 48
    assert _difference(got, expected) <= TOLERANCE
    assert len(got.hidden_states) == len(expected.hidden_states)
    for ours, theirs in zip(got.hidden_states, expected.hidden_states):
        assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_a_deep_copy_groups_with_its_own_weights(model_dir, processor):
    """The grouping forward is bound to its tower: a copy runs its own (changed) weights."""
    _, batched = _models(model_dir, "sdpa")
    copied = copy.deepcopy(batched)
    with torch.no_grad():
        for parameter in copied.model.visual.parameters():
            parameter.mul_(0.5)
    inputs = _pixels(processor, MIXED)
    (mine, calls), (theirs, _) = _vision(copied, inputs), _vision(batched, inputs)
    assert calls == len(copied.model.visual.blocks) * 3  # the copy still groups
    assert _difference(mine, theirs) > 1e-3  # and computes with the copy's weights
