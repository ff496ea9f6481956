"""The tiny Qwen2-VL checkpoint loads offline and runs the documented image and video usage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from labeler.testing import build_tiny_model
from labeler.testing.samples import gradient_image, noise_image

MAX_NEW_TOKENS = 8
HEIGHT, WIDTH = 96, 128  # resized to 84x140 pixels: 3x5 cells of 28x28, 15 tokens
FRAMES = 4  # two temporal patches of 2 frames


def noise_video() -> np.ndarray:
    """Frames as one (T, H, W, 3) uint8 array, as decoded video frames come."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)


def gradient_video() -> np.ndarray:
    return np.stack([np.asarray(gradient_image(WIDTH, HEIGHT))] * FRAMES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, offline) -> Path:
    return build_tiny_model("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))


def load(folder: Path) -> tuple[Qwen2VLProcessor, Qwen2VLForConditionalGeneration]:
    processor = AutoProcessor.from_pretrained(folder)
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    return processor, model


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load(checkpoint)


def generate(processor, model, kind: str, media) -> tuple[list[int], str]:
    """The documented usage: chat template, processor, greedy generate, trim, decode."""
    messages = [{"role": "user", "content": [
        {"type": kind}, {"type": "text", "text": f"Describe the {kind}."},
    ]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], **{f"{kind}s": [media]}, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    trimmed = [out[len(prompt):] for prompt, out in zip(inputs.input_ids, generated)]
    decoded = processor.batch_decode(
        trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return trimmed[0].tolist(), decoded[0]


def test_checkpoint_is_small_safetensors(checkpoint):
    assert list(checkpoint.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in checkpoint.iterdir()) < 5 * 2**20


def test_auto_processor_is_the_full_processor(loaded):
    processor, _ = loaded
    assert isinstance(processor, Qwen2VLProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    for token in ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|box_start|>", "<|box_end|>",
                  "<|object_ref_start|>", "<|object_ref_end|>"]:
        assert processor.tokenizer.tokenize(token) == [token]


def test_image_prompt_has_one_token_per_28px_cell(loaded):
    processor, model = loaded
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[noise_image(WIDTH, HEIGHT)], return_tensors="pt")
    assert inputs.image_grid_thw.tolist() == [[1, 6, 10]]  # 14px patches of 84x140
    assert (inputs.input_ids == model.config.image_token_id).sum() == 15


def test_image_generation_is_deterministic(loaded, checkpoint, tmp_path_factory):
    ids, text = generate(*loaded, "image", noise_image(WIDTH, HEIGHT))
    assert len(ids) > 0 and isinstance(text, str)
    rebuilt = build_tiny_model("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl_again"))
    assert generate(*load(rebuilt), "image", noise_image(WIDTH, HEIGHT)) == (ids, text)


def test_different_images_give_different_text(loaded):
    noise_ids, _ = generate(*loaded, "image", noise_image(WIDTH, HEIGHT))
    gradient_ids, _ = generate(*loaded, "image", gradient_image(WIDTH, HEIGHT))
    assert noise_ids != gradient_ids


def test_video_goes_through_the_video_processor(loaded):
    processor, model = loaded
    inputs = processor(text=["<|vision_start|><|video_pad|><|vision_end|>"],
                       videos=[noise_video()], return_tensors="pt")
    assert inputs.video_grid_thw.tolist() == [[FRAMES // 2, 6, 10]]
    assert (inputs.input_ids == model.config.video_token_id).sum() == 2 * 15

    noise_ids, _ = generate(processor, model, "video", noise_video())
    gradient_ids, _ = generate(processor, model, "video", gradient_video())
    assert len(noise_ids) > 0 and noise_ids != gradient_ids
