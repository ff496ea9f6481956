"""The tiny BLIP-2 checkpoint loads offline and runs the documented captioning and VQA usage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoProcessor,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
)

from labeler.testing import build_tiny_model
from labeler.testing.samples import gradient_image, noise_image

MAX_NEW_TOKENS = 12
WIDTH, HEIGHT = 100, 80  # not the model's 64x64, so the processor has to resize
QUESTION = "Question: how many cats are there? Answer:"  # the documented VQA prompt


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, offline) -> Path:
    return build_tiny_model("blip2", tmp_path_factory.mktemp("blip2"))


def load(folder: Path) -> tuple[Blip2Processor, Blip2ForConditionalGeneration]:
    processor = AutoProcessor.from_pretrained(folder)
    model = Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    return processor, model


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load(checkpoint)


def generate(processor, model, image: Image.Image, prompt: str | None = None):
    """The documented usage: processor, greedy generate, batch_decode without special tokens.

    Returns (prompt ids, generated ids, text); an OPT decoder returns the prompt ids first.
    """
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False
        )
    text = processor.batch_decode(generated, skip_special_tokens=True)[0].strip()
    prompt_ids = inputs["input_ids"][0].tolist() if prompt is not None else None
    return prompt_ids, generated[0].tolist(), text


def test_checkpoint_is_small_safetensors(checkpoint):
    assert list(checkpoint.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in checkpoint.iterdir()) < 5 * 2**20


def test_processor_prepends_one_image_token_per_query(loaded):
    processor, model = loaded
    assert isinstance(processor, Blip2Processor)
    assert isinstance(processor.image_processor, BlipImageProcessor)
    assert processor.num_query_tokens == model.config.num_query_tokens
    tokenizer = processor.tokenizer
    assert tokenizer.tokenize("<image>") == ["<image>"]
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id

    inputs = processor(images=noise_image(WIDTH, HEIGHT), text=QUESTION, return_tensors="pt")
    image_ids = [model.config.image_token_id] * model.config.num_query_tokens
    # Image tokens first, then OPT's BOS (</s>), then the question.
    assert inputs["input_ids"][0, : len(image_ids) + 1].tolist() == image_ids + [
        tokenizer.bos_token_id
    ]
    size = model.config.vision_config.image_size
    assert inputs["pixel_values"].shape == (1, 3, size, size)


def test_captioning_usage(loaded):
    _, model = loaded
    _, ids, text = generate(*loaded, noise_image(WIDTH, HEIGHT))
    # Without a prompt the model starts from the image tokens and BOS.
    start = [model.config.image_token_id] * model.config.num_query_tokens
    start.append(model.config.text_config.bos_token_id)
    assert ids[: len(start)] == start and len(ids) > len(start)
    assert isinstance(text, str)


def test_question_answering_usage(loaded):
    prompt_ids, ids, text = generate(*loaded, noise_image(WIDTH, HEIGHT), QUESTION)
    assert ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids)
    assert text.startswith(QUESTION)


def test_same_seed_gives_the_same_checkpoint(loaded, checkpoint, tmp_path_factory):
    rebuilt = build_tiny_model("blip2", tmp_path_factory.mktemp("blip2_again"))
    first, second = (load_file(folder / "model.safetensors") for folder in (checkpoint, rebuilt))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert generate(*load(rebuilt), noise_image(WIDTH, HEIGHT), QUESTION) == generate(
        *loaded, noise_image(WIDTH, HEIGHT), QUESTION
    )


@pytest.mark.parametrize("prompt", [None, QUESTION])
def test_different_images_give_different_text(loaded, prompt):
    _, noise_ids, _ = generate(*loaded, noise_image(WIDTH, HEIGHT), prompt)
    _, gradient_ids, _ = generate(*loaded, gradient_image(WIDTH, HEIGHT), prompt)
    assert noise_ids != gradient_ids
