"""Florence-2 adapters vs the documented single-image usage on the same tiny checkpoint.

Documented usage: processor(text=task_token + text, images=image) -> model.generate(
input_ids, pixel_values) -> processor.batch_decode(ids, skip_special_tokens=False) ->
processor.post_process_generation(text, task=task_token, image_size=image.size).
Every task token of every task runs in one batch of differently sized images whose rows
carry different prompts (so prompts of different lengths share a padded batch).
"""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Florence2ForConditionalGeneration

from labeler import registry
from labeler.config import TaskSpec
from labeler.models.base import ImageInput
from labeler.models.florence2 import (
    TASK_TOKENS,
    Florence2Captioner,
    Florence2Detector,
    Florence2Grounder,
    Florence2Ocr,
    Florence2Regions,
    chosen_token_logprobs,
    decode_with_spans,
    resolve_task_prompt,
)
from labeler.models.florence2_parsing import (
    ParseConfig,
    TokenSpan,
    dequantize,
    parse_boxes_or_polygons,
    parse_grounding,
    parse_labelled_boxes,
    parse_ocr_regions,
    parse_region_proposals,
    parse_text,
)
from labeler.testing.samples import synthetic_image

# Enough for a few boxes per answer (label + 4 location tokens each); the tiny model never
# ends an answer by itself, so every token is generated: fewer keeps the tests fast.
MAX_NEW_TOKENS = 20
# Wide, tall, odd and square sizes: box scaling differs for each; none is the model's 64x64.
SIZES = [(100, 80), (47, 120), (200, 60), (64, 64)]
# task -> the row prompts of its batch (None: the spec's / default prompt). Together they
# cover every task token, the defaults and the token implied by a text alone.
ROWS = {
    "detect": [None, "<OPEN_VOCABULARY_DETECTION>car", "a red car on the road", "<OD>"],
    "ground": ["<CAPTION_TO_PHRASE_GROUNDING>a red car", "a dog",
               "a man riding a horse next to a small red car", "car"],
    "caption": [None, "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<CAPTION>"],
    "ocr": [None, "<OCR_WITH_REGION>", "<OCR>", "<OCR_WITH_REGION>"],
    "regions": [None, "<REGION_PROPOSAL>", "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>"],
}
ADAPTERS = {"detect": Florence2Detector, "ground": Florence2Grounder,
            "caption": Florence2Captioner, "ocr": Florence2Ocr, "regions": Florence2Regions}
QUAD = ("x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3")


def spec(model_dir, task, **kw) -> TaskSpec:
    """A spec with short answers; threshold 0 keeps every box, as the documented usage."""
    kw.setdefault("generation", {"max_new_tokens": MAX_NEW_TOKENS})
    kw.setdefault("threshold", 0.0)
    return TaskSpec(task=task, model={"family": "florence2", "source": model_dir}, **kw)


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model("florence2")


@pytest.fixture(scope="module")
def documented(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Florence2ForConditionalGeneration.from_pretrained(model_dir).eval()
    return processor, model


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


def rows(images, prompts) -> list[ImageInput]:
    return [ImageInput(im, im.shape[1], im.shape[0], prompt=p) for im, p in zip(images, prompts)]


def reference(documented, prompt: str, image: np.ndarray, num_beams: int = 1) -> dict:
    """The documented usage for one image and one full prompt (task token + text)."""
    processor, model = documented
    token = prompt[:prompt.index(">") + 1]
    pil = Image.fromarray(image)
    inputs = processor(text=prompt, images=pil, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                             max_new_tokens=MAX_NEW_TOKENS, num_beams=num_beams, do_sample=False)
    text = processor.batch_decode(ids, skip_special_tokens=False)[0]
    return processor.post_process_generation(text, task=token, image_size=pil.size)[token]


def expected_detections(answer: dict) -> list[tuple[str, list[float]]]:
    """(label, box) of the documented answer, corners ordered (the record's convention)."""
    labels = answer["labels"] if "labels" in answer else answer["bboxes_labels"]
    assert not answer.get("polygons"), "the tiny model wrote polygons: extend this test"
    return [(label, [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])
            for label, b in zip(labels, answer["bboxes"])]


def assert_same_as_documented(documented, out: dict, prompt: str, image: np.ndarray,
                              num_beams: int = 1) -> int:
    """Compare one adapter row with the documented usage; returns the number of boxes."""
    want = reference(documented, prompt, image, num_beams)
    assert out["prompt"] == prompt
    if isinstance(want, str):  # captions and <OCR>: exact text
        assert out["text"] == want
        return 0
    if "quad_boxes" in want:  # <OCR_WITH_REGION>
        regions = out["ocr_regions"]
        assert [r["text"] for r in regions] == want["labels"]
        assert out["text"] == "\n".join(want["labels"])
        for region, quad in zip(regions, want["quad_boxes"]):
            assert [region[k] for k in QUAD] == pytest.approx(quad, abs=1e-4)
        return 0
    got = [(d["label"], [d["x0"], d["y0"], d["x1"], d["y1"]]) for d in out["detections"]]
    expected = expected_detections(want)
    assert [g[0] for g in got] == [e[0] for e in expected]
    for (_, box), (_, want_box) in zip(got, expected):
        assert box == pytest.approx(want_box, abs=1e-4)
    h, w = image.shape[:2]
    for d in out["detections"]:
        assert 0 <= d["x0"] <= d["x1"] <= w and 0 <= d["y0"] <= d["y1"] <= h
        assert 0 < d["score"] <= 1
    return len(got)


@pytest.mark.parametrize("task", list(ROWS))
def test_batched_rows_equal_the_documented_usage(documented, model_dir, images, task):
    adapter = ADAPTERS[task](spec(model_dir, task, prompt="car" if task == "ground" else None))
    adapter.setup(torch.device("cpu"))
    prompts = ROWS[task]
    outputs = adapter(rows(images, prompts))
    assert len(outputs) == len(images)
    boxes = 0
    for out, prompt, image in zip(outputs, prompts, images):
        full = "".join(resolve_task_prompt(task, prompt or adapter.spec.prompt))
        boxes += assert_same_as_documented(documented, out, full, image)
    if task in ("detect", "ground", "regions"):
        assert boxes >= 3, "the tiny model should write some boxes"
        scores = [d["score"] for out in outputs for d in out["detections"]]
        assert len(set(scores)) == len(scores), "every box has its own confidence"


def test_beam_search_batch_equals_the_documented_usage(documented, model_dir, images):
    adapter = Florence2Regions(spec(model_dir, "regions", generation={
        "max_new_tokens": MAX_NEW_TOKENS, "num_beams": 2}))
    adapter.setup(torch.device("cpu"))
    prompts = ["<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<DENSE_REGION_CAPTION>"]
    outputs = adapter(rows(images, prompts))
    for out, prompt, image in zip(outputs, prompts, images):
        assert_same_as_documented(documented, out, prompt, image, num_beams=2)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_token_logprobs_equal_transition_scores(documented, images, num_beams):
    processor, model = documented  # the tokenizer pads on the right, as the adapter does
    assert processor.tokenizer.padding_side == "right"
    inputs = processor(text=["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>a red car"],
                       images=[Image.fromarray(im) for im in images[:2]], padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, num_beams=num_beams, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    beams = getattr(out, "beam_indices", None)
    ours = chosen_token_logprobs(out.sequences, out.logits, beams)
    theirs = model.compute_transition_scores(out.sequences, out.logits, beams,
                                             normalize_logits=True)
    assert ours.shape == out.sequences.shape
    assert torch.allclose(ours[:, -theirs.shape[1]:], theirs, atol=1e-6)
    assert (ours[:, 0] == 0).all()  # the decoder start token was given, not chosen


def test_decoding_with_spans_gives_the_documented_text(documented):
    processor, _ = documented
    tokenizer = processor.tokenizer
    added = frozenset(tokenizer.added_tokens_decoder)
    # "é" is two bytes, i.e. two byte-level tokens here: neither alone is a character.
    ids = tokenizer("</s><s>café<loc_1><loc_2> two cars<loc_999></s>",
                    add_special_tokens=False)["input_ids"]
    text, spans = decode_with_spans(tokenizer, ids, added)
    assert text == tokenizer.decode(ids, skip_special_tokens=False)
    assert len(spans) == len(ids)
    assert [text[s:e] for s, e in spans if text[s:e].startswith("<loc_")] == [
        "<loc_1>", "<loc_2>", "<loc_999>"]
    e_acute = text.index("é")
    byte_tokens = [k for k, (s, e) in enumerate(spans) if s <= e_acute < e]
    assert len(byte_tokens) == 2, "both bytes of é wrote it"
    assert "".join(text[s:e] for s, e in spans[:byte_tokens[0]]) == "</s><s>caf"


# Canned answers, well-formed and not: our parsers give the documented boxes and texts.
CANNED = {
    "<OD>": "</s><s>car<loc_100><loc_200><loc_500><loc_800>person<loc_0><loc_0><loc_999>"
            "<loc_999><loc_10><loc_10><loc_20><loc_30>dog<loc_5><loc_6></s>",
    "<DENSE_REGION_CAPTION>": "<s>a café sign<loc_1><loc_2><loc_3><loc_4>x<loc_7><loc_",
    "<REGION_PROPOSAL>": "</s><s><loc_1><loc_2><loc_3><loc_4>junk<loc_9><loc_8><loc_7><loc_6>"
                         "<loc_5></s>",
    "<CAPTION_TO_PHRASE_GROUNDING>": "<s>a red car<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>"
                                     "<loc_7><loc_8> and a dog<loc_9><loc_9><loc_99><loc_99></s>",
    "<OPEN_VOCABULARY_DETECTION>": "<s>car<poly><loc_100><loc_100><loc_500><loc_100><loc_500>"
                                   "<loc_500><sep><loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>"
                                   "</poly>bus<loc_7><loc_8><loc_9><loc_10><loc_11><loc_12></s>",
    "<OCR_WITH_REGION>": "</s><s>HELLO<loc_10><loc_10><loc_500><loc_10><loc_500><loc_100>"
                         "<loc_10><loc_100>b<loc_1>c<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6>"
                         "<loc_7><loc_8>tail<loc_3></s>",
}
PARSERS = {"<OD>": parse_labelled_boxes, "<DENSE_REGION_CAPTION>": parse_labelled_boxes,
           "<REGION_PROPOSAL>": parse_region_proposals,
           "<CAPTION_TO_PHRASE_GROUNDING>": parse_grounding,
           "<OPEN_VOCABULARY_DETECTION>": parse_boxes_or_polygons,
           "<OCR_WITH_REGION>": parse_ocr_regions}


@pytest.mark.parametrize("token", list(CANNED))
def test_parsers_give_the_documented_post_processing_on_canned_answers(documented, token):
    processor, _ = documented
    text, size = CANNED[token], (123, 77)
    want = processor.post_process_generation(text, task=token, image_size=size)[token]
    one_token = [TokenSpan(0, len(text), -0.5)]  # scores are not compared here
    parsed = PARSERS[token](text, size, one_token, ParseConfig())
    if token == "<OCR_WITH_REGION>":
        assert [r["text"] for r in parsed.ocr_regions] == want["labels"]
        assert [[r[k] for k in QUAD] for r in parsed.ocr_regions] == want["quad_boxes"]
    elif want.get("polygons"):
        polygons = [(label, p) for label, ps in zip(want["polygons_labels"], want["polygons"])
                    for p in ps if len(p) >= 6]
        assert [(d["label"], d["polygon"]) for d in parsed.detections] == polygons
    else:
        got = [(d["label"], [d["x0"], d["y0"], d["x1"], d["y1"]]) for d in parsed.detections]
        assert got == expected_detections(want)


# Pieces of random answers: location tokens, labels (spaces, a line break, non-ASCII), the
# markers the documented parsing removes or splits on, and cut-off location tokens.
_PIECES = ["car", " a red car ", "café", "猫", "a\nb", "  ", "x y", "<s>", "</s>", "<pad>",
           "<poly>", "</poly>", "<sep>", "<and>", "<loc_", "<loc_12", "<od>", "<ground>"]


def test_parsers_give_the_documented_post_processing_on_random_answers(documented):
    """Seeded random well- and ill-formed answers (bins 0..999, where the documented boxes are
    ours): every task token's parser gives the documented boxes, quads, labels and text."""
    processor, _ = documented
    rng = np.random.default_rng(0)
    parsers = {**PARSERS, "<OCR>": parse_text, "<CAPTION>": parse_text}
    for _ in range(2000):
        # A piece is 1 or 4 location tokens (a box, half an OCR quad) or one of _PIECES.
        pieces = ["".join(f"<loc_{b}>" for b in rng.integers(1000, size=rng.choice([1, 4])))
                  if rng.random() < 0.55 else str(rng.choice(_PIECES))
                  for _ in range(rng.integers(12))]
        text = "".join(pieces)
        token = str(rng.choice(list(parsers)))
        size = (int(rng.choice([1, 7, 123, 4032])), int(rng.choice([1, 9, 77, 3024])))
        want = processor.post_process_generation(text, task=token, image_size=size)[token]
        parsed = parsers[token](text, size, [TokenSpan(0, len(text), -0.5)], ParseConfig())
        if isinstance(want, str):
            assert parsed.text == want, text
        elif "quad_boxes" in want:
            assert [r["text"] for r in parsed.ocr_regions] == want["labels"], text
            assert [[r[k] for k in QUAD] for r in parsed.ocr_regions] == want["quad_boxes"], text
        elif want.get("polygons"):
            polygons = [(label, p) for label, ps in
                        zip(want["polygons_labels"], want["polygons"]) for p in ps if len(p) >= 6]
            assert [(d["label"], d["polygon"]) for d in parsed.detections] == polygons, text
        else:
            got = [(d["label"], [d["x0"], d["y0"], d["x1"], d["y1"]]) for d in parsed.detections]
            assert got == expected_detections(want), text


def test_dequantize_equals_the_processor_for_every_bin(documented):
    processor, _ = documented
    bins = torch.arange(1000)
    for size in (1, 7, 64, 100, 333, 768, 1000, 1920, 4032):
        want = processor.post_processor.dequantize(torch.stack([bins, bins], -1), (size, size))
        assert dequantize(bins.tolist(), size) == want[:, 0].tolist()


def test_default_prompts_and_labels():
    assert Florence2Detector.default_prompt == "<OD>"
    assert Florence2Captioner.default_prompt == "<CAPTION>"
    assert Florence2Ocr.default_prompt == "<OCR>"
    assert Florence2Regions.default_prompt == "<DENSE_REGION_CAPTION>"
    assert Florence2Grounder.default_prompt is None
    assert resolve_task_prompt("detect", None) == ("<OD>", "")
    assert resolve_task_prompt("detect", None, ["car", "dog"]) == (
        "<OPEN_VOCABULARY_DETECTION>", "car <and> dog")
    assert resolve_task_prompt("detect", "<OPEN_VOCABULARY_DETECTION>", ["cat"]) == (
        "<OPEN_VOCABULARY_DETECTION>", "cat")
    assert resolve_task_prompt("detect", "a red car") == (
        "<OPEN_VOCABULARY_DETECTION>", "a red car")
    assert resolve_task_prompt("ground", " a red car ") == (
        "<CAPTION_TO_PHRASE_GROUNDING>", "a red car")
    assert resolve_task_prompt("caption", "<MORE_DETAILED_CAPTION>") == (
        "<MORE_DETAILED_CAPTION>", "")
    for task, table in TASK_TOKENS.items():
        assert table.default in table.parsers


def test_labels_become_one_open_vocabulary_query(model_dir, images):
    adapter = Florence2Detector(spec(model_dir, "detect", labels=["car", "dog"],
                                     generation={"max_new_tokens": 4}))
    adapter.setup(torch.device("cpu"))
    inputs = adapter.preprocess(rows(images[:2], [None, "<OD>"]))
    assert inputs["prompts"] == [("<OPEN_VOCABULARY_DETECTION>", "car <and> dog"), ("<OD>", "")]
    out = adapter.postprocess(adapter.predict(inputs), rows(images[:2], [None, "<OD>"]))
    assert [o["prompt"] for o in out] == ["<OPEN_VOCABULARY_DETECTION>car <and> dog", "<OD>"]
    assert "max_new_tokens=4" in out[0]["warnings"][-1]


def test_queries_ask_for_their_labels_and_label_thresholds_keep_boxes(model_dir, images):
    """A label's queries all go into the one open-vocabulary query; a box the model names
    by a query (case aside) takes that query's label and is kept at that label's threshold;
    a box named otherwise keeps its text and the task's threshold."""
    ontology = {"labels": ["car", "dog"], "queries": {"car": ["car", "automobile"]}}
    adapter = Florence2Detector(spec(model_dir, "detect", **ontology))
    adapter.setup(torch.device("cpu"))
    batch = rows(images, [None, "<OD>", "<OD>", "<OD>"])
    inputs = adapter.preprocess(batch)
    assert inputs["prompts"][0] == ("<OPEN_VOCABULARY_DETECTION>", "car <and> automobile <and> dog")
    raw = adapter.predict(inputs)
    before = [d for out in adapter.postprocess(raw, batch) for d in out["detections"]]
    named = sorted({d["label"] for d in before if d["label"].strip()})
    assert named, "the tiny model should name some boxes"
    # The random model's own words stand in for what a real one says: one of them becomes a
    # query of "dog", written in another case, and "dog" gets a threshold of its own.
    word = named[0]
    dog_scores = sorted(d["score"] for d in before if d["label"] == word)
    cut = dog_scores[len(dog_scores) // 2]
    adapter.spec = spec(model_dir, "detect", labels=["car", "dog"],
                        queries={"car": ["car", "automobile"], "dog": [word.upper()]},
                        label_thresholds={"dog": cut})
    after = [d for out in adapter.postprocess(raw, batch) for d in out["detections"]]
    expected = [{**d, "label": "dog"} if d["label"] == word else d for d in before
                if d["label"] != word or d["score"] >= cut]
    assert after == expected
    assert any(d["label"] == "dog" for d in after) and len(after) < len(before)
    assert adapter.parameters()["label_thresholds"] == {"dog": cut}


def test_nms_thins_generated_boxes(model_dir, images):
    """`nms` applies to every task with boxes, generated ones included: the rows keep a
    subset of the boxes, in their order, no two of which overlap above nms_threshold."""
    from torchvision.ops import box_iou

    batch = rows(images, [None] * len(images))
    plain = Florence2Regions(spec(model_dir, "regions", generation={"max_new_tokens": 60}))
    plain.setup(torch.device("cpu"))
    thinned = plain.with_spec(spec(model_dir, "regions", nms="all", nms_threshold=0.2,
                                   generation={"max_new_tokens": 60}))
    raw = plain.predict(plain.preprocess(batch))
    before = plain.finish(raw, batch)
    after = thinned.finish(raw, batch)
    dropped = 0
    for a, b in zip(before, after):
        assert [d for d in a["detections"] if d in b["detections"]] == b["detections"]
        dropped += len(a["detections"]) - len(b["detections"])
        xyxy = torch.tensor([[d["x0"], d["y0"], d["x1"], d["y1"]] for d in b["detections"]])
        if len(xyxy) > 1:
            iou = box_iou(xyxy, xyxy).fill_diagonal_(0)
            assert iou.max() <= 0.2
    assert dropped > 0
    assert json.loads(thinned.parameters_json())["nms_threshold"] == 0.2
    assert "nms" not in json.loads(plain.parameters_json())


@pytest.mark.parametrize("task, kw, message", [
    ("caption", {"prompt": "<OD>"}, "<OD> is not a Florence-2 caption task token; valid: "
                                    "<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>"),
    ("detect", {"prompt": "<OCR>"}, "valid: <OD>, <OPEN_VOCABULARY_DETECTION>"),
    ("ocr", {"prompt": "<OCR_WITH_REGION> please"}, "takes no text after it"),
    ("regions", {"prompt": "describe the regions"}, "takes a task token as its prompt"),
    ("ground", {}, "needs a phrase to ground"),
    ("ground", {"prompt": "<CAPTION_TO_PHRASE_GROUNDING>  "}, "needs a phrase to ground"),
    ("detect", {"prompt": "<OPEN_VOCABULARY_DETECTION>"}, "needs what to detect"),
    ("detect", {"prompt": "<OD>", "labels": ["car"]}, "takes no labels"),
    ("detect", {"prompt": "a bus", "labels": ["car"]}, "from labels, not both"),
    ("caption", {"labels": ["car"]}, "takes no labels"),
    ("detect", {"prompt": "car", "labels": ["car"], "queries": {"car": ["car", "auto"]}},
     "from labels, not both"),
    ("caption", {"labels": ["car"], "label_thresholds": {"car": 0.2}},
     "apply to task 'detect' only"),
    ("detect", {"query_image": "cat.jpg"}, "takes no query_image"),
])
def test_check_spec_refuses(task, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TaskSpec(task=task, model={"family": "florence2", "source": "unused"}, **kw)


def test_threshold_drops_low_scoring_boxes(model_dir, images):
    adapter = Florence2Detector(spec(model_dir, "detect"))
    adapter.setup(torch.device("cpu"))
    batch = rows(images, [None] * len(images))
    raw = adapter.predict(adapter.preprocess(batch))
    every = [d["score"] for out in adapter.postprocess(raw, batch) for d in out["detections"]]
    cut = sorted(every)[len(every) // 2]
    adapter.spec = adapter.spec.model_copy(update={"threshold": cut})
    kept = [d["score"] for out in adapter.postprocess(raw, batch) for d in out["detections"]]
    assert kept == [s for s in every if s >= cut] and 0 < len(kept) < len(every)


def test_a_bad_row_prompt_raises_before_any_model_work(model_dir, images):
    """The actor then retries the batch row by row: only this row becomes an error row."""
    adapter = Florence2Captioner(spec(model_dir, "caption"))  # no setup: nothing loaded
    with pytest.raises(ValueError, match="<OD> is not a Florence-2 caption task token"):
        adapter.preprocess(rows(images, [None, "<OD>"]))
    assert adapter.prompt_for(rows(images, ["  "])[0]) == "<CAPTION>"  # blank: the default


def test_registry_resolves_every_task():
    for task, cls in ADAPTERS.items():
        assert registry.load_adapter_class(task, "florence2") is cls


def test_a_box_named_by_a_non_ascii_query_gets_its_label():
    """The documented parsing drops non-ASCII characters from a box's phrase (`café` comes
    back `caf`, `猫` as ''): the phrase is mapped back to the one label it can be."""
    from labeler.models.florence2 import query_labels

    ontology = TaskSpec(task="detect", model={"family": "florence2", "source": "m"},
                        labels=["café", "猫", "dog"], queries={"dog": ["Jalapeño dog"]})
    label_of = query_labels(ontology)
    assert label_of["caf"] == label_of["café"] == "café"
    assert label_of[""] == "猫" and label_of["jalapeo dog"] == "dog"
    two = TaskSpec(task="detect", model={"family": "florence2", "source": "m"},
                   labels=["猫", "犬"])
    assert "" not in query_labels(two)  # either could be meant: the box keeps its phrase
