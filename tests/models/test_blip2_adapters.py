"""BLIP-2 caption and ask adapters vs the documented single-image usage, same tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Blip2ForConditionalGeneration

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.blip2 import Blip2Ask, Blip2Caption, as_question
from labeler.testing.samples import synthetic_image

MAX_NEW_TOKENS = 16  # long enough for texts of different lengths, short enough for a CPU
# Wide, tall, square (the model's own 64x64) and odd: the processor resizes each differently.
SIZES = [(120, 80), (60, 150), (64, 64), (201, 97)]
QUESTION = "what is in the picture?"
# Row prompts of different token lengths, so the batch is left padded; None: the spec's.
ROW_QUESTIONS = ["how many shapes are there in this picture today?", None, "colour?", None]
ROW_PREFIXES = ["a photo of", None, "a painting of a small", None]


def _spec(model_dir: str, task: str, **kw) -> TaskSpec:
    generation = {"max_new_tokens": MAX_NEW_TOKENS, **kw.pop("generation", {})}
    return TaskSpec(task=task, model={"family": "blip2", "source": model_dir},
                    generation=generation, **kw)


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> str:
    return tiny_model("blip2")


@pytest.fixture(scope="module")
def reference_model(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Blip2ForConditionalGeneration.from_pretrained(model_dir).eval()
    return processor, model


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


def make_adapter(spec: TaskSpec):
    adapter = {"caption": Blip2Caption, "ask": Blip2Ask}[spec.task](spec)
    adapter.setup(torch.device("cpu"))
    return adapter


def rows(images, prompts=None) -> list[ImageInput]:
    prompts = prompts or [None] * len(images)
    return [ImageInput(im, im.shape[1], im.shape[0], prompt=p) for im, p in zip(images, prompts)]


def reference_text(reference_model, image: np.ndarray, prompt: str | None,
                   max_new_tokens: int = MAX_NEW_TOKENS, num_beams: int = 1) -> str:
    """The documented usage, one image: processor (no text for a plain caption), greedy (or
    beam search) generate, batch_decode without special tokens; the prompt ids (which OPT returns first)
    cut off, the text stripped."""
    processor, model = reference_model
    inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                   num_beams=num_beams, do_sample=False)
    # Without text the model's start ids (image placeholders, BOS) are all special tokens,
    # which decoding skips: the documented decode of the whole output is the continuation.
    start = inputs["input_ids"].shape[1] if prompt is not None else 0
    return processor.batch_decode(generated[:, start:], skip_special_tokens=True)[0].strip()


def test_caption_batch_equals_the_documented_usage(model_dir, reference_model, images):
    out = make_adapter(_spec(model_dir, "caption"))(rows(images))
    assert len(out) == len(images)
    for image, got in zip(images, out):
        assert got == {"text": reference_text(reference_model, image, None), "prompt": None}
    assert len({got["text"] for got in out}) > 1, "different images should give different text"


def test_caption_prefix_prompt_is_continued(model_dir, reference_model, images):
    out = make_adapter(_spec(model_dir, "caption", prompt="a photo of"))(rows(images))
    for image, got in zip(images, out):
        assert got["prompt"] == "a photo of"
        assert got["text"] == reference_text(reference_model, image, "a photo of")


def test_caption_row_prefixes_mix_with_unprompted_rows(model_dir, reference_model, images):
    """Rows with a prefix and rows without one (the text "") share one left-padded batch."""
    out = make_adapter(_spec(model_dir, "caption"))(rows(images, ROW_PREFIXES))
    for image, prefix, got in zip(images, ROW_PREFIXES, out):
        assert got == {"text": reference_text(reference_model, image, prefix), "prompt": prefix}


def test_ask_batch_equals_the_documented_usage(model_dir, reference_model, images):
    out = make_adapter(_spec(model_dir, "ask", prompt=QUESTION))(rows(images))
    wrapped = f"Question: {QUESTION} Answer:"
    for image, got in zip(images, out):
        assert got == {"text": reference_text(reference_model, image, wrapped), "prompt": wrapped}


def test_ask_row_questions_replace_the_spec_question(model_dir, reference_model, images):
    adapter = make_adapter(_spec(model_dir, "ask", prompt=QUESTION))
    inputs = adapter.model_inputs(rows(images, ROW_QUESTIONS))
    mask = inputs["attention_mask"]
    assert (mask == 0).any() and mask[:, -1].all(), "prompts should be padded on the left"
    out = adapter.postprocess(adapter.predict(inputs), rows(images, ROW_QUESTIONS))
    for image, question, got in zip(images, ROW_QUESTIONS, out):
        wrapped = as_question(question or QUESTION)
        assert got == {"text": reference_text(reference_model, image, wrapped), "prompt": wrapped}


def test_a_blank_row_prompt_is_no_prompt(model_dir, reference_model, images):
    """A manifest cell of spaces was used as given: a caption continued a prefix of spaces,
    a question became "Question:  Answer:". It is no prompt, as Florence-2 reads it."""
    blank = rows(images[:2], ["   ", "\t"])
    caption = make_adapter(_spec(model_dir, "caption"))(blank)
    assert caption == make_adapter(_spec(model_dir, "caption"))(rows(images[:2]))
    assert [got["prompt"] for got in caption] == [None, None]
    asked = make_adapter(_spec(model_dir, "ask", prompt=QUESTION))(blank)
    assert [got["prompt"] for got in asked] == [as_question(QUESTION)] * 2


def test_max_new_tokens_is_respected(model_dir, reference_model, images):
    adapter = make_adapter(_spec(model_dir, "ask", prompt=QUESTION,
                                 generation={"max_new_tokens": 3}))
    new_ids = adapter.predict(adapter.model_inputs(rows(images)))
    assert new_ids.shape[0] == len(images) and new_ids.shape[1] <= 3
    for image, got in zip(images, adapter.postprocess(new_ids, rows(images))):
        assert got["text"] == reference_text(reference_model, image, as_question(QUESTION), 3)


def test_beam_search_equals_the_documented_usage(model_dir, reference_model, images):
    adapter = make_adapter(_spec(model_dir, "ask", prompt=QUESTION, generation={"num_beams": 2}))
    out = adapter(rows(images, ROW_QUESTIONS))
    for image, got in zip(images, out):
        assert got["text"] == reference_text(reference_model, image, got["prompt"], num_beams=2)


def test_sampling_with_a_seed_repeats(model_dir, reference_model, images):
    """A seed gives each image the documented usage's text after torch.manual_seed(seed),
    whatever the rows batched with it (a job's batch, a server's dynamic batch): seeded once
    per batch, an image's text changed with its neighbours."""
    greedy = make_adapter(_spec(model_dir, "caption"))(rows(images))
    adapter = make_adapter(_spec(model_dir, "caption",
                                 generation={"do_sample": True, "seed": 7}))
    first = adapter(rows(images))
    assert first == adapter(rows(images))
    assert first != greedy, "sampling should leave the greedy path somewhere"
    assert adapter(rows(images[::-1])) == first[::-1]
    outputs, _ = adapter.run_timed(rows(images[1:]))
    assert outputs == first[1:]
    processor, model = reference_model
    for image, got in zip(images, first):
        inputs = processor(images=Image.fromarray(image), return_tensors="pt")
        torch.manual_seed(7)
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=True,
                                 top_k=50, top_p=1.0, temperature=1.0)
        assert got["text"] == processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


@pytest.mark.parametrize("question, wrapped", [
    ("what is this?", "Question: what is this? Answer:"),
    ("  how many cats?  ", "Question: how many cats? Answer:"),
    ("Question: how many cats? Answer:", "Question: how many cats? Answer:"),
    ("question: is it red? answer:", "question: is it red? answer:"),
    ("Question: unfinished", "Question: Question: unfinished Answer:"),
])
def test_questions_are_written_as_the_documentation_does(question, wrapped):
    assert as_question(question) == wrapped


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_ask_refuses_a_spec_without_a_question(model_dir, prompt):
    with pytest.raises(ValueError, match="BLIP-2 ask needs a question"):
        _spec(model_dir, "ask", prompt=prompt)


def test_defaults_caption_unprompted_ask_without_default():
    assert Blip2Caption.default_prompt is None
    assert Blip2Ask.default_prompt is None
    Blip2Caption.check_spec(_spec("unused", "caption"))  # no prompt needed


def test_sampling_follows_the_specs_top_k_not_the_checkpoints(model_dir, images):
    """A checkpoint whose generation_config sets top_k 1 (Qwen2-VL's Instruct ones do)
    sampled the greedy text whatever the seed: the spec's top_k is passed every time."""
    greedy = make_adapter(_spec(model_dir, "caption"))(rows(images))
    for top_k, same_as_greedy in ((50, False), (1, True)):
        adapter = make_adapter(_spec(model_dir, "caption", generation={
            "do_sample": True, "seed": 7, "top_k": top_k}))
        adapter.model.generation_config.top_k = 1  # as such a checkpoint ships
        assert (adapter(rows(images)) == greedy) is same_as_greedy, top_k
