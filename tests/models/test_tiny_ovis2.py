"""The tiny Ovis2 checkpoint loads offline and runs the documented image usage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Ovis2ForConditionalGeneration, Ovis2Processor

from labeler.testing import build_tiny_model
from labeler.testing.samples import gradient_image, noise_image

MAX_NEW_TOKENS = 8
# Wider than tall: cut into 2 tiles of 112x112 plus a thumbnail, so the grid layout is used.
HEIGHT, WIDTH = 96, 128
TILES = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, offline) -> Path:
    return build_tiny_model("ovis2", tmp_path_factory.mktemp("ovis2"))


def load(folder: Path) -> tuple[Ovis2Processor, Ovis2ForConditionalGeneration]:
    processor = AutoProcessor.from_pretrained(folder)
    model = Ovis2ForConditionalGeneration.from_pretrained(folder).eval()
    return processor, model


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load(checkpoint)


def generate(processor, model, image: Image.Image) -> tuple[list[int], str]:
    """The documented usage: chat template, processor, greedy generate, trim, decode."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Describe the image."},
    ]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
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
    assert isinstance(processor, Ovis2Processor)
    for token in ["<|im_start|>", "<|im_end|>", "<image>", "<IMG_ATOM>", "<IMG_START>",
                  "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"]:
        assert processor.tokenizer.tokenize(token) == [token]


def test_image_tokens_match_what_the_vision_tower_emits(loaded):
    processor, model = loaded
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    inputs = processor(text=[text], images=[noise_image(WIDTH, HEIGHT)], return_tensors="pt")
    assert inputs.pixel_values.shape[0] == TILES
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs.pixel_values).pooler_output
    assert features.shape[1] == processor.image_seq_length == 16  # (112 / 14 / 2) ** 2
    atoms = (inputs.input_ids == model.config.image_token_id).sum().item()
    assert atoms == TILES * processor.image_seq_length


def test_image_generation_is_deterministic(loaded, checkpoint, tmp_path_factory):
    ids, text = generate(*loaded, noise_image(WIDTH, HEIGHT))
    assert len(ids) > 0 and isinstance(text, str)
    rebuilt = build_tiny_model("ovis2", tmp_path_factory.mktemp("ovis2_again"))
    assert generate(*load(rebuilt), noise_image(WIDTH, HEIGHT)) == (ids, text)


def test_different_images_give_different_text(loaded):
    noise_ids, _ = generate(*loaded, noise_image(WIDTH, HEIGHT))
    gradient_ids, _ = generate(*loaded, gradient_image(WIDTH, HEIGHT))
    assert noise_ids != gradient_ids
