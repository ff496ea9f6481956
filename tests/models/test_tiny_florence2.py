"""The tiny Florence-2 checkpoint loads offline and runs the documented task-prompt usage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, Florence2ForConditionalGeneration, Florence2Processor

from labeler.testing import build_tiny_model
from labeler.testing.samples import gradient_image, noise_image

MAX_NEW_TOKENS = 12
WIDTH, HEIGHT = 100, 80  # not the model's 64x64, so resizing and box scaling are exercised


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, offline) -> Path:
    return build_tiny_model("florence2", tmp_path_factory.mktemp("florence2"))


def load(folder: Path) -> tuple[Florence2Processor, Florence2ForConditionalGeneration]:
    processor = AutoProcessor.from_pretrained(folder)
    model = Florence2ForConditionalGeneration.from_pretrained(folder).eval()
    return processor, model


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load(checkpoint)


def generate(processor, model, task: str, image: Image.Image) -> tuple[list[int], str, dict]:
    """The documented usage: task prompt, greedy generate, decode with special tokens, parse."""
    inputs = processor(text=task, images=image, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
            max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False,
        )
    text = processor.batch_decode(generated, skip_special_tokens=False)[0]
    parsed = processor.post_process_generation(text, task=task, image_size=image.size)
    return generated[0].tolist(), text, parsed


def test_checkpoint_is_small_safetensors(checkpoint):
    assert list(checkpoint.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in checkpoint.iterdir()) < 5 * 2**20


def test_processor_matches_the_vision_tower(loaded):
    processor, model = loaded
    assert isinstance(processor, Florence2Processor)
    assert model.config.vision_config.projection_dim == model.config.text_config.d_model
    inputs = processor(text="<CAPTION>", images=noise_image(WIDTH, HEIGHT), return_tensors="pt")
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"]).pooler_output
    assert features.shape[1] == processor.num_image_tokens
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == features.shape[1]
    for token in ["<image>", "<loc_0>", "<loc_999>", "<poly>", "<sep>", "<od>"]:
        assert processor.tokenizer.tokenize(token) == [token]


def test_location_tokens_parse_into_boxes(loaded):
    processor, _ = loaded
    text = "</s><s>car<loc_100><loc_200><loc_500><loc_800></s>"
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert processor.batch_decode([ids], skip_special_tokens=False)[0] == text
    parsed = processor.post_process_generation(text, task="<OD>", image_size=(WIDTH, HEIGHT))
    # Bin centres of 1000 bins: x (i + 0.5) * 100 / 1000, y (i + 0.5) * 80 / 1000.
    assert parsed == {"<OD>": {"bboxes": [[10, 16, 50, 64]], "labels": ["car"]}}


def test_caption_usage(loaded):
    processor, _ = loaded
    ids, text, parsed = generate(*loaded, "<CAPTION>", noise_image(WIDTH, HEIGHT))
    # Decoding starts from </s> and is forced to <s> next, as with the released weights.
    tokenizer = processor.tokenizer
    assert ids[:2] == [tokenizer.eos_token_id, tokenizer.bos_token_id]
    assert text.startswith("</s><s>")
    assert len(ids) > 2
    assert list(parsed) == ["<CAPTION>"] and isinstance(parsed["<CAPTION>"], str)


def test_object_detection_usage(loaded):
    _, _, parsed = generate(*loaded, "<OD>", noise_image(WIDTH, HEIGHT))
    boxes, labels = parsed["<OD>"]["bboxes"], parsed["<OD>"]["labels"]
    assert len(boxes) == len(labels)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= min(x0, x1) and max(x0, x1) <= WIDTH
        assert 0 <= min(y0, y1) and max(y0, y1) <= HEIGHT


def test_same_seed_gives_the_same_checkpoint(loaded, checkpoint, tmp_path_factory):
    rebuilt = build_tiny_model("florence2", tmp_path_factory.mktemp("florence2_again"))
    first, second = (load_file(folder / "model.safetensors") for folder in (checkpoint, rebuilt))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert generate(*load(rebuilt), "<CAPTION>", noise_image(WIDTH, HEIGHT)) == generate(
        *loaded, "<CAPTION>", noise_image(WIDTH, HEIGHT)
    )


def test_different_images_give_different_text(loaded):
    noise_ids, _, _ = generate(*loaded, "<CAPTION>", noise_image(WIDTH, HEIGHT))
    gradient_ids, _, _ = generate(*loaded, "<CAPTION>", gradient_image(WIDTH, HEIGHT))
    assert noise_ids != gradient_ids
