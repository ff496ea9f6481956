"""Qwen2-VL adapters vs the documented single-image usage on the same tiny checkpoint.

The tiny model writes gibberish, so the text tasks compare raw decoded text, and grounding
compares the raw text and what the parser makes of that same text. To see real boxes, one
test constrains generation to the box grammar (a prefix_allowed_tokens_fn, the same for
both paths): the model still chooses every digit and letter, and the scores come from its
raw logits, which the constraint does not change.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.qwen2_vl import (
    Qwen2VLAsk,
    Qwen2VLCaption,
    Qwen2VLGrounder,
    Qwen2VLOcr,
)
from labeler.models.qwen2_vl_parsing import BOX_END, BOX_START, GROUNDING_TOKENS, parse_grounding
from labeler.testing.samples import synthetic_image

# Wide, tall, odd, and 3 pixels tall (which a channels-last array would make look
# channels-first to the processor; cut from a taller sample, which needs more than 10 rows).
SIZES = [(200, 60), (50, 200), (47, 33), (120, 3)]
MAX_NEW_TOKENS = 16  # enough for differing gibberish, short enough for a fast CPU test
ADAPTERS = {"caption": Qwen2VLCaption, "ocr": Qwen2VLOcr, "ask": Qwen2VLAsk,
            "ground": Qwen2VLGrounder}
QUESTION = "What colour is the largest shape?"


def _spec(model_dir, task, **kw) -> TaskSpec:
    kw.setdefault("generation", {"max_new_tokens": MAX_NEW_TOKENS})
    if task == "ask":
        kw.setdefault("prompt", QUESTION)
    return TaskSpec(task=task, model={"family": "qwen2_vl", "source": model_dir}, **kw)


def _setup(model_dir, task, **kw):
    adapter = ADAPTERS[task](_spec(model_dir, task, **kw))
    adapter.setup(torch.device("cpu"))
    return adapter


def _inputs(images, prompts=None):
    prompts = prompts or [None] * len(images)
    return [ImageInput(im, im.shape[1], im.shape[0], prompt=p) for im, p in zip(images, prompts)]


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("qwen2_vl")


@pytest.fixture(scope="module")
def images():
    return [np.ascontiguousarray(np.asarray(synthetic_image(w, max(h, 20), seed=i))[:h])
            for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def reference(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    return processor, model


def reference_generate(reference, image: np.ndarray, prompt: str,
                       max_new_tokens: int = MAX_NEW_TOKENS, **generate_kwargs):
    """The documented usage for one image: chat template, processor, greedy generate,
    generated ids trimmed of the prompt. -> (trimmed ids (L,), generate's output)."""
    processor, model = reference
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.fromarray(image)], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             **generate_kwargs)
    sequences = out.sequences if generate_kwargs.get("return_dict_in_generate") else out
    return sequences[0, inputs.input_ids.shape[1]:], out


def reference_text(reference, image, prompt) -> str:
    processor, _ = reference
    trimmed, _ = reference_generate(reference, image, prompt)
    return processor.batch_decode([trimmed], skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)[0]


def grounding_text(processor, trimmed: torch.Tensor) -> str:
    """Decode keeping the special tokens, then remove all but the box/ref ones."""
    text = processor.batch_decode([trimmed], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)[0]
    for token in processor.tokenizer.all_special_tokens:
        if token not in GROUNDING_TOKENS:
            text = text.replace(token, "")
    return text


@pytest.mark.parametrize("task", ["caption", "ocr", "ask"])
def test_batched_text_equals_the_documented_usage(model_dir, reference, images, task):
    adapter = _setup(model_dir, task)
    # One row brings its own prompt, which replaces the spec's (or the default) for it alone.
    row_prompts = [None, "Name one shape.", None, None]
    batch = adapter(_inputs(images, row_prompts))
    assert len(batch) == len(images)
    for image, row_prompt, ours in zip(images, row_prompts, batch):
        prompt = row_prompt or adapter.spec.prompt or adapter.default_prompt
        assert ours["prompt"] == prompt
        assert ours["text"] == reference_text(reference, image, prompt)
    texts = [r["text"] for r in batch]
    assert all(texts) and len(set(texts)) == len(texts), "images should give different text"


def test_batched_grounding_text_equals_the_documented_usage(model_dir, reference, images):
    adapter = _setup(model_dir, "ground", threshold=0.0)
    batch = adapter(_inputs(images))
    processor, _ = reference
    for image, ours in zip(images, batch):
        trimmed, _ = reference_generate(reference, image, adapter.default_prompt)
        text = grounding_text(processor, trimmed)
        assert ours["text"] == text
        boxes, notes = parse_grounding(text, image.shape[1], image.shape[0])
        assert [(d["label"], d["x0"], d["y0"], d["x1"], d["y1"]) for d in ours["detections"]] \
            == [(b.label, b.x0, b.y0, b.x1, b.y1) for b in boxes]
        assert ours.get("warnings", []) == notes


def box_grammar(tokenizer):
    """prefix_allowed_tokens_fn that makes every answer `<ref>xyz</ref><box>(ddd,ddd),(ddd,
    ddd)</box><box>(ddd,ddd),(ddd,ddd)</box><|im_end|>`, the model choosing each letter and
    digit; the second box has no reference of its own. -> (the function, answer length)."""
    ids = tokenizer.convert_tokens_to_ids
    one = {c: [ids(c)] for c in "(),"}
    ref_start, ref_end, box_start, box_end = ([ids(t)] for t in GROUNDING_TOKENS)
    digits, letters = [ids(c) for c in "0123456789"], [ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    point = [one["("], digits, digits, digits, one[","], digits, digits, digits, one[")"]]
    box = [box_start, *point, one[","], *point, box_end]
    slots = [ref_start, letters, letters, letters, ref_end, *box, *box, [ids("<|im_end|>")]]
    im_start = ids("<|im_start|>")
    header = len(tokenizer.encode("assistant\n", add_special_tokens=False))

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        last_turn = (input_ids == im_start).nonzero()[-1].item()
        return slots[min(len(input_ids) - last_turn - 1 - header, len(slots) - 1)]

    return allowed, len(slots)


def test_constrained_boxes_and_scores_equal_the_documented_usage(model_dir, reference, images,
                                                                 monkeypatch):
    processor, _ = reference
    allowed, length = box_grammar(processor.tokenizer)
    adapter = _setup(model_dir, "ground", threshold=0.0, generation={"max_new_tokens": length})
    kwargs = adapter.generation_kwargs()
    monkeypatch.setattr(adapter, "generation_kwargs",
                        lambda: {**kwargs, "prefix_allowed_tokens_fn": allowed})
    batch = adapter(_inputs(images))
    box_ids = processor.tokenizer.convert_tokens_to_ids([BOX_START, BOX_END])
    scores = []
    for image, ours in zip(images, batch):
        trimmed, out = reference_generate(
            reference, image, adapter.default_prompt, max_new_tokens=length,
            prefix_allowed_tokens_fn=allowed, return_dict_in_generate=True, output_logits=True)
        logprobs = reference[1].compute_transition_scores(
            out.sequences, out.logits, normalize_logits=True)[0].tolist()
        text = grounding_text(processor, trimmed)
        boxes, _ = parse_grounding(text, image.shape[1], image.shape[0])
        # Token-level scoring, independent of the adapter's character spans: from each
        # <|box_start|> to its <|box_end|>.
        ids = trimmed.tolist()
        starts = [i for i, t in enumerate(ids) if t == box_ids[0]]
        ends = [i for i, t in enumerate(ids) if t == box_ids[1]]
        want = [math.exp(np.mean(logprobs[s:e + 1])) for s, e in zip(starts, ends)]

        got = ours["detections"]
        assert ours["text"] == text and len(boxes) == len(got) == len(want) == 2
        assert [d["label"] for d in got] == [boxes[0].label] * 2 and len(boxes[0].label) == 3
        for det, box, score in zip(got, boxes, want):
            for key in ("x0", "y0", "x1", "y1"):
                assert det[key] == pytest.approx(getattr(box, key), abs=1e-4), key
            assert det["score"] == pytest.approx(score, abs=1e-4)
            assert 0 < det["score"] < 1
            assert 0 <= det["x0"] <= det["x1"] <= image.shape[1]
            assert 0 <= det["y0"] <= det["y1"] <= image.shape[0]
        scores += [d["score"] for d in got]
    assert len(set(scores)) == len(scores), "scores must come from the tokens, not a constant"


def test_check_spec_refuses_what_qwen2_vl_cannot_run(model_dir):
    with pytest.raises(ValueError, match="needs a prompt"):
        TaskSpec(task="ask", model={"family": "qwen2_vl", "source": model_dir})
    for task in ADAPTERS:
        with pytest.raises(ValueError, match="not labels"):
            _spec(model_dir, task, labels=["cat"])
        with pytest.raises(ValueError, match="query_image"):
            _spec(model_dir, task, query_image="cat.jpg")
        with pytest.raises(ValueError, match="prompt is empty"):
            _spec(model_dir, task, prompt="  ")


def test_default_prompts():
    assert Qwen2VLCaption.default_prompt == "Describe this image in one sentence."
    assert "text" in Qwen2VLOcr.default_prompt
    assert Qwen2VLGrounder.default_prompt.startswith("Detect all objects")
    assert Qwen2VLAsk.default_prompt is None  # the spec gives the question (check_spec)


def test_prompt_resolution_row_then_spec_then_default(model_dir, images):
    image = images[0]
    row = ImageInput(image, image.shape[1], image.shape[0], prompt="row prompt")
    bare = ImageInput(image, image.shape[1], image.shape[0])
    caption = Qwen2VLCaption(_spec(model_dir, "caption"))
    assert caption.prompt_for(bare) == Qwen2VLCaption.default_prompt
    assert caption.prompt_for(row) == "row prompt"
    spec_prompt = Qwen2VLGrounder(_spec(model_dir, "ground", prompt="Find the red square."))
    assert spec_prompt.prompt_for(bare) == "Find the red square."
    assert spec_prompt.prompt_for(row) == "row prompt"


@pytest.fixture(scope="module")
def grounder(model_dir):
    return _setup(model_dir, "ground", threshold=0.0)


def test_grounding_decodes_ids_into_boxes_scored_by_their_tokens(grounder):
    """Canned generated ids (as a batch row: the answer, end of turn, padding) with made-up
    log-probabilities: the box is read on the 0-1000 grid of the original size, its score is
    the geometric mean over <|box_start|> ... <|box_end|>, other special tokens leave no text."""
    tokenizer = grounder.processor.tokenizer
    answer = ("<|object_ref_start|>red square<|object_ref_end|>"
              "<|box_start|>(100,200),(300,400)<|box_end|>")
    ids = tokenizer.encode(answer + "<|im_end|><|endoftext|><|endoftext|>",
                           add_special_tokens=False)
    logprobs = [-0.01 * (i + 1) for i in range(len(ids))]
    box_from = ids.index(tokenizer.convert_tokens_to_ids(BOX_START))
    box_to = ids.index(tokenizer.convert_tokens_to_ids(BOX_END))
    image = ImageInput(np.zeros((10, 10, 3), np.uint8), width=640, height=480)

    raw = {"ids": torch.tensor([ids]), "logprobs": torch.tensor([logprobs])}
    (out,) = grounder.postprocess(raw, [image])
    assert out["text"] == answer and "warnings" not in out
    (det,) = out["detections"]
    assert det["label"] == "red square"
    assert (det["x0"], det["y0"], det["x1"], det["y1"]) == pytest.approx((64, 96, 192, 192))
    want = math.exp(np.mean(logprobs[box_from:box_to + 1]))
    assert det["score"] == pytest.approx(want, rel=1e-6)

    grounder_strict = Qwen2VLGrounder(grounder.spec.model_copy(update={"threshold": 0.99}))
    grounder_strict.processor, grounder_strict.special_ids, grounder_strict.kept_ids = (
        grounder.processor, grounder.special_ids, grounder.kept_ids)
    (strict,) = grounder_strict.postprocess(raw, [image])
    assert strict["detections"] == [] and strict["text"] == answer
    assert grounder_strict.parameters()["threshold"] == 0.99


def test_grounding_reports_malformed_boxes_as_warnings(grounder):
    tokenizer = grounder.processor.tokenizer
    ids = tokenizer.encode("<|box_start|>(12,34),(5", add_special_tokens=False)
    raw = {"ids": torch.tensor([ids]), "logprobs": torch.full((1, len(ids)), -0.5)}
    (out,) = grounder.postprocess(raw, [ImageInput(np.zeros((4, 4, 3), np.uint8), 100, 100)])
    assert out["detections"] == [] and "truncated box" in out["warnings"][0]
