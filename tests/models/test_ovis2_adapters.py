"""Ovis2 caption, ocr and ask adapters vs the documented single-image usage, same tiny
checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Ovis2ForConditionalGeneration

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.ovis2 import Ovis2Ask, Ovis2Caption, Ovis2Ocr
from labeler.testing.samples import synthetic_image

MAX_NEW_TOKENS = 16  # long enough for texts of different lengths, short enough for a CPU
# Wide, tall, one tile (112x112) and near-square: the tiny processor cuts them into 3, 3, 1
# and 4 tiles plus a thumbnail (checked below), so rows differ in tiles and prompt length.
SIZES = [(300, 100), (100, 260), (112, 112), (201, 197)]
ADAPTERS = {"caption": Ovis2Caption, "ocr": Ovis2Ocr, "ask": Ovis2Ask}
QUESTION = "What colour is the largest shape?"
# Row prompts of different token lengths; None: the spec's (or the default) prompt.
ROW_PROMPTS = ["Hi", None, "List every shape in the picture with its colour and size.", None]


def _spec(model_dir: str, task: str, **kw) -> TaskSpec:
    generation = {"max_new_tokens": MAX_NEW_TOKENS, **kw.pop("generation", {})}
    if task == "ask":
        kw.setdefault("prompt", QUESTION)
    return TaskSpec(task=task, model={"family": "ovis2", "source": model_dir},
                    generation=generation, **kw)


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> str:
    return tiny_model("ovis2")


@pytest.fixture(scope="module")
def reference_model(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Ovis2ForConditionalGeneration.from_pretrained(model_dir).eval()
    return processor, model


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


def make_adapter(spec: TaskSpec):
    adapter = ADAPTERS[spec.task](spec)
    adapter.setup(torch.device("cpu"))
    return adapter


def rows(images, prompts=None) -> list[ImageInput]:
    prompts = prompts or [None] * len(images)
    return [ImageInput(im, im.shape[1], im.shape[0], prompt=p) for im, p in zip(images, prompts)]


def reference_inputs(processor, image: np.ndarray, prompt: str):
    """The documented input building for one image: chat template, then the processor."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": prompt},
    ]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=[text], images=[Image.fromarray(image)], padding=True,
                     return_tensors="pt")


def reference_text(reference_model, image: np.ndarray, prompt: str,
                   max_new_tokens: int = MAX_NEW_TOKENS, num_beams: int = 1) -> str:
    """The documented usage, one image: greedy (or beam search) generate, prompt ids trimmed, batch_decode
    without special tokens, stripped."""
    processor, model = reference_model
    inputs = reference_inputs(processor, image, prompt)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                   num_beams=num_beams, do_sample=False)
    trimmed = [out[len(ids):] for ids, out in zip(inputs.input_ids, generated)]
    return processor.batch_decode(trimmed, skip_special_tokens=True)[0].strip()


def test_images_are_cut_into_different_numbers_of_tiles(reference_model, images):
    processor, _ = reference_model
    tiles = [reference_inputs(processor, im, "x")["pixel_values"].shape[0] for im in images]
    assert tiles == [4, 4, 1, 5]  # tiles plus thumbnail; a single tile has no thumbnail


@pytest.mark.parametrize("task", ["caption", "ocr", "ask"])
def test_batch_equals_the_documented_usage(model_dir, reference_model, images, task):
    adapter = make_adapter(_spec(model_dir, task))
    out = adapter(rows(images))
    prompt = adapter.prompt_for(rows(images)[0])
    assert len(out) == len(images)
    for image, got in zip(images, out):
        assert got == {"text": reference_text(reference_model, image, prompt), "prompt": prompt}
    assert len({got["text"] for got in out}) > 1, "different images should give different text"


@pytest.mark.parametrize("task", ["caption", "ocr", "ask"])
def test_row_prompts_replace_the_spec_prompt(model_dir, reference_model, images, task):
    adapter = make_adapter(_spec(model_dir, task))
    batch = rows(images, ROW_PROMPTS)
    inputs = adapter.model_inputs(batch)
    mask = inputs["attention_mask"]
    assert (mask == 0).any() and mask[:, -1].all(), "prompts should be padded on the left"
    out = adapter.postprocess(adapter.predict(inputs), batch)
    for image, row_prompt, got in zip(images, ROW_PROMPTS, out):
        prompt = row_prompt or adapter.prompt_for(ImageInput(image, 1, 1))
        assert got == {"text": reference_text(reference_model, image, prompt), "prompt": prompt}


def test_spec_prompt_replaces_the_default(model_dir, reference_model, images):
    out = make_adapter(_spec(model_dir, "caption", prompt=QUESTION))(rows(images[:3]))
    for image, got in zip(images, out):
        assert got == {"text": reference_text(reference_model, image, QUESTION),
                       "prompt": QUESTION}


def test_default_prompts():
    assert Ovis2Caption.default_prompt == "Describe the image."
    assert Ovis2Ocr.default_prompt.startswith("Read all the text in the image.")
    assert Ovis2Ask.default_prompt is None


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_ask_refuses_a_spec_without_a_question(model_dir, prompt):
    with pytest.raises(ValueError, match="Ovis2 ask needs a question"):
        _spec(model_dir, "ask", prompt=prompt)


@pytest.mark.parametrize("task", ["caption", "ocr"])
def test_caption_and_ocr_need_no_prompt(task):
    ADAPTERS[task].check_spec(_spec("unused", task))


def test_max_new_tokens_is_respected(model_dir, reference_model, images):
    adapter = make_adapter(_spec(model_dir, "caption", generation={"max_new_tokens": 3}))
    new_ids = adapter.predict(adapter.model_inputs(rows(images)))
    assert new_ids.shape[0] == len(images) and new_ids.shape[1] <= 3
    for image, got in zip(images, adapter.postprocess(new_ids, rows(images))):
        assert got["text"] == reference_text(reference_model, image, Ovis2Caption.default_prompt, 3)


def test_beam_search_equals_the_documented_usage(model_dir, reference_model, images):
    """Beams copy each row; every copy must still get its own image's tiles."""
    adapter = make_adapter(_spec(model_dir, "ask", generation={"num_beams": 2}))
    out = adapter(rows(images, ROW_PROMPTS))
    for image, got in zip(images, out):
        assert got["text"] == reference_text(reference_model, image, got["prompt"], num_beams=2)


def test_sampling_with_a_seed_repeats(model_dir, images):
    greedy = make_adapter(_spec(model_dir, "caption"))(rows(images))
    adapter = make_adapter(_spec(model_dir, "caption", generation={"do_sample": True, "seed": 7}))
    first, second = adapter(rows(images)), adapter(rows(images))
    assert first == second
    assert first != greedy, "sampling should leave the greedy path somewhere"
