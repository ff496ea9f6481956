"""OWLv2 pseudo-labelling (OWL-ST): the batched adapter vs the documented single-image usage
on the same tiny checkpoint, the combined-mode scaling, thresholds, the text cache, spec
checks."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Owlv2ForObjectDetection, Owlv2Processor

from labeler.config import TaskSpec
from labeler.models import owlv2
from labeler.models.base import ImageInput
from labeler.models.owlv2 import box_corners
from labeler.models.owlv2_pseudo import Owlv2PseudoLabeler
from labeler.pseudo.queries import (
    GENERIC_WORDS_FILE,
    STOP_WORDS_FILE,
    caption_queries,
    shipped_word_list,
)
from labeler.testing.samples import synthetic_image

SIZES = [(200, 60), (50, 200), (96, 96), (47, 33)]
# Empty; long, in a script the tiny byte-level tokenizer spends 3 tokens a character on (so
# most n-grams overflow its 16 tokens); ordinary English alt text; no caption at all.
CAPTIONS = ["", "一只小猫坐在红色的沙发上，旁边有一只狗在窗户下面睡觉。" * 4,
            "A brown dog and a cat on the red sofa - stock photo.jpg", None]
VOCABULARY = ["cat", "a red car", "person"]
TEMPLATES = [["{}"], ["a photo of a {}", "a {}"]]


def _spec(model_dir, **options) -> TaskSpec:
    threshold = options.pop("threshold", 0.1)
    options.setdefault("vocabulary", VOCABULARY)
    return TaskSpec(task="pseudo-label", model={"family": "owlv2", "source": model_dir},
                    threshold=threshold, pseudo_label=options)


def _inputs(images, captions):
    return [ImageInput(im, im.shape[1], im.shape[0], caption=c) for im, c in zip(images, captions)]


def _labeler(model_dir, **options) -> Owlv2PseudoLabeler:
    adapter = Owlv2PseudoLabeler(_spec(model_dir, **options))
    adapter.setup(torch.device("cpu"))
    return adapter


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def reference(tiny_owlv2):
    return (Owlv2Processor.from_pretrained(tiny_owlv2),
            Owlv2ForObjectDetection.from_pretrained(tiny_owlv2).eval())


def reference_pseudo_labels(reference, image, caption, vocabulary, templates, threshold=0.1,
                            weight=0.3, image_threshold=0.3):
    """One image as the documentation runs OWLv2: processor(text=[queries], images=image)
    -> model(**inputs) (truncation=True: the documented call raises on queries longer than
    16 tokens). With templates, each query's embedding is the mean of the normalised
    get_text_features of its filled templates, scored by model.class_predictor. Then this
    task's rules in plain code: sigmoid, vocabulary columns x weight when the caption gave
    queries, best query per box, score > threshold, padded-square boxes clipped (those left
    without area dropped), sorted (ties in patch order).
    Returns (detections, kept); each detection also has "tied": the queries scoring within
    1e-6 of its best (truncation makes some queries identical, and the tiny model's random
    weights saturate many sigmoids at 1.0)."""
    processor, model = reference
    words = shipped_word_list(STOP_WORDS_FILE), shipped_word_list(GENERIC_WORDS_FILE)
    captioned = caption_queries(caption, *words)
    queries = captioned + vocabulary
    pil = Image.fromarray(image)
    inputs = processor(text=[queries], images=pil, truncation=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
        logits = outputs.logits[0]
        if templates != ["{}"]:
            embeds = []
            for query in queries:
                text = processor(text=[[t.replace("{}", query) for t in templates]],
                                 truncation=True, return_tensors="pt")
                feats = model.owlv2.get_text_features(**text).pooler_output
                embeds.append((feats / feats.norm(dim=-1, keepdim=True)).mean(dim=0))
            feats = outputs.image_embeds.reshape(1, -1, outputs.image_embeds.shape[-1])
            logits = model.class_predictor(feats, torch.stack(embeds)[None])[0][0]
    scores = torch.sigmoid(logits)  # (P, Q)
    if captioned:
        scores[:, len(captioned):] *= weight
    best, label = scores.max(dim=-1)
    side = max(pil.size)
    corners = box_corners(outputs.pred_boxes[0]) * side
    objectness = torch.sigmoid(outputs.objectness_logits[0])
    dets = []
    for p in torch.argsort(best, descending=True, stable=True).tolist():
        if best[p] <= threshold:
            break
        x0, y0, x1, y1 = corners[p].tolist()
        w, h = pil.size
        dets.append({"label": queries[label[p]], "score": best[p].item(),
                     "x0": min(max(x0, 0), w), "y0": min(max(y0, 0), h),
                     "x1": min(max(x1, 0), w), "y1": min(max(y1, 0), h),
                     "objectness": objectness[p].item(),
                     "tied": {queries[q] for q in (scores[p] >= best[p] - 1e-6).nonzero()[:, 0]}})
    dets = [d for d in dets if d["x1"] > d["x0"] and d["y1"] > d["y0"]]  # not in the padding
    kept = bool(dets) and dets[0]["score"] >= image_threshold
    return dets, kept


def _corners(det):
    return torch.tensor([det["x0"], det["y0"], det["x1"], det["y1"]])


def _assert_same(ours, ref):
    """Same boxes, scores, objectness (1e-4) and labels (or a tied one); matched by box,
    since boxes of equal score may come in either order."""
    assert len(ours) == len(ref)
    scores = [d["score"] for d in ours]
    assert scores == sorted(scores, reverse=True)
    for det in ours:
        want = min(ref, key=lambda r: (_corners(r) - _corners(det)).abs().sum().item())
        assert det["label"] == want["label"] or det["label"] in want["tied"]
        for key in ("score", "x0", "y0", "x1", "y1", "objectness"):
            assert det[key] == pytest.approx(want[key], abs=1e-4), key


@pytest.mark.parametrize("templates", TEMPLATES, ids=["plain", "ensembled"])
def test_batched_pseudo_labels_equal_the_documented_usage(tiny_owlv2, reference, images,
                                                          templates):
    adapter = _labeler(tiny_owlv2, templates=templates)
    out = adapter(_inputs(images, CAPTIONS))
    assert len(out) == len(images)
    for image, caption, result in zip(images, CAPTIONS, out):
        dets, kept = reference_pseudo_labels(reference, image, caption, VOCABULARY, templates)
        assert dets, "the tiny model should find something at this threshold"
        _assert_same(result["detections"], dets)
        assert result["kept"] == kept
        assert (result["filter_reason"] is None) == kept
    # the long non-Latin caption overflows the text model: said once, in one warning
    (warning,) = out[1]["warnings"]
    assert "longer than the text model's 16 tokens" in warning and "truncated" in warning
    # the empty and the missing caption: the vocabulary alone, unscaled, said in a warning
    for result in (out[0], out[3]):
        assert {d["label"] for d in result["detections"]} <= set(VOCABULARY)
        assert "the vocabulary alone was used" in result["warnings"][0]
    assert not any("vocabulary alone" in w for w in out[2].get("warnings", []))
    assert {d["label"] for d in out[2]["detections"]} - set(VOCABULARY), "caption queries win"


def _by_box(result):
    return {(round(d["x0"], 3), round(d["y0"], 3), round(d["x1"], 3), round(d["y1"], 3)): d
            for d in result["detections"]}


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_combined_mode_scales_the_vocabulary_by_its_weight(tiny_owlv2, images, weight):
    """Every box (threshold 0: all kept) scores max(caption score, weight x vocabulary
    score) with a caption, and the vocabulary's own score without one. (The tiny
    checkpoint's tokenizer is trained anew in each session, so which query wins a box varies
    between sessions; 30 names against one caption query win some boxes in any.)"""
    names = [f"thing {i}" for i in range(30)]
    rows = _inputs(images, ["zebra"] * len(images))
    vocab_only = _labeler(tiny_owlv2, threshold=0.0, use_captions=False, vocabulary=names)(rows)
    caption_only = _labeler(tiny_owlv2, threshold=0.0, vocabulary=[])(rows)
    combined = _labeler(tiny_owlv2, threshold=0.0, vocabulary=names,
                        vocabulary_weight=weight)(rows)
    vocabulary_wins = boxes = 0
    for v_row, c_row, both_row in zip(vocab_only, caption_only, combined):
        v_boxes, c_boxes, both = _by_box(v_row), _by_box(c_row), _by_box(both_row)
        assert len(both) == len(v_boxes) == len(c_boxes) > 0
        for box, det in both.items():
            v, c = v_boxes[box], c_boxes[box]
            assert det["score"] == pytest.approx(max(c["score"], weight * v["score"]), abs=1e-6)
            if abs(c["score"] - weight * v["score"]) > 1e-6:
                expected = c["label"] if c["score"] > weight * v["score"] else v["label"]
                assert det["label"] == expected
            vocabulary_wins += det["label"] in names
        boxes += len(both)
    if weight == 1.0:  # at 0.3 the tiny model's caption scores may beat every scaled one
        assert vocabulary_wins > 0
    assert all(d["label"] in names for r in vocab_only for d in r["detections"])


def test_combined_mode_on_known_cosines(tiny_owlv2, images, monkeypatch):
    """predict with the class head's parts replaced by known values: shift 0, scale 10,
    box A = e0, box B = -e0, caption query 'zebra' = e0, vocabulary 'thing' = e1. So
    'zebra' scores sigmoid(10) on A and sigmoid(-10) on B, 'thing' sigmoid(0) = 0.5 on
    both; with the caption, 'thing' counts 0.3 x 0.5 = 0.15 and wins B only."""
    adapter = _labeler(tiny_owlv2, vocabulary=["thing"])
    rows = _inputs(images[:2], ["zebra", None])
    inputs = adapter.model_inputs(rows)
    dim = adapter.vocab_unit.shape[1]
    e0, e1 = torch.eye(dim)[0], torch.eye(dim)[1]
    patches = 36  # 96 px / 16 = 6 x 6
    boxes = torch.stack([e0, -e0] * (patches // 2))  # even boxes A, odd boxes B

    def known_parts(image_feats):
        batch = image_feats.shape[0]
        return (boxes.expand(batch, -1, -1), torch.zeros(batch, patches),
                torch.full((batch, patches), 10.0))

    monkeypatch.setattr(adapter, "_class_parts", known_parts)
    adapter.vocab_unit = e1[None]
    adapter.text_cache["zebra"] = (e0, False)
    raw = adapter.predict(inputs)
    names = [raw["names"][i] for i in raw["label_ids"][0].tolist()]
    high, low = torch.sigmoid(torch.tensor(10.0)).item(), torch.sigmoid(torch.tensor(-10.0)).item()
    assert names[:2] == ["zebra", "thing"]
    assert raw["scores"][0, :2].tolist() == pytest.approx([high, 0.3 * 0.5])
    assert 0.3 * 0.5 > low
    # the row without a caption: the vocabulary alone, unscaled
    assert [raw["names"][i] for i in raw["label_ids"][1, :2].tolist()] == ["thing", "thing"]
    assert raw["scores"][1, :2].tolist() == pytest.approx([0.5, 0.5])


def _raw(scores, label_ids, names, rows, truncated=()):
    """A predict() output for two 100 x 50 images with given box scores (B, P)."""
    scores = torch.tensor(scores)
    batch, patches = scores.shape
    boxes = torch.tensor([0.25, 0.25, 0.2, 0.2]).expand(batch, patches, 4)  # cxcywh, square
    return {"scores": scores, "label_ids": torch.tensor(label_ids), "boxes": boxes,
            "objectness": torch.zeros(batch, patches), "names": names, "rows": rows,
            "truncated": set(truncated)}


def test_box_and_image_thresholds(tiny_owlv2):
    """postprocess on known scores: boxes kept when score > threshold, sorted; an image is
    kept when its best box >= image threshold."""
    images = [ImageInput(np.zeros((50, 100, 3), np.uint8), 100, 50)] * 3
    names, rows = ["dog", "a dog", "cat"], [["dog", "a dog"], ["dog"], ["a dog"]]
    raw = _raw([[0.1, 0.35, 0.5], [0.29, 0.05, 0.2], [0.1, 0.05, 0.0]],
               [[0, 1, 2], [0, 0, 2], [1, 1, 1]], names, rows)
    out = _labeler(tiny_owlv2, vocabulary=["cat"], image_threshold=0.35).postprocess(raw, images)
    assert [(d["label"], d["score"]) for d in out[0]["detections"]] == [
        ("cat", 0.5), ("a dog", pytest.approx(0.35))]  # 0.1 is not > 0.1
    assert out[0]["kept"] is True and out[0]["filter_reason"] is None
    d = out[0]["detections"][0]
    assert [d["x0"], d["y0"], d["x1"], d["y1"]] == pytest.approx([15, 15, 35, 35])
    assert d["objectness"] == 0.5
    assert out[1]["kept"] is False and len(out[1]["detections"]) == 2
    assert out[1]["filter_reason"] == "below image threshold: best box 0.290 < 0.35"
    assert out[2] == {"detections": [], "kept": False,
                      "filter_reason": "no box: no box scores above the box threshold 0.1"}
    at = _labeler(tiny_owlv2, vocabulary=["cat"], image_threshold=0.29).postprocess(raw, images)
    assert at[1]["kept"] is True  # best == image threshold: kept


def test_thresholds_on_the_model(tiny_owlv2, images):
    rows = _inputs(images[:3], CAPTIONS[:3])
    for result in _labeler(tiny_owlv2, threshold=0.2)(rows):
        scores = [d["score"] for d in result["detections"]]
        assert all(s > 0.2 for s in scores) and scores == sorted(scores, reverse=True)
        assert result["kept"] == (bool(scores) and scores[0] >= 0.3)
    none = _labeler(tiny_owlv2, threshold=1.0)(rows)
    assert all(r["detections"] == [] and r["kept"] is False for r in none)


def test_a_row_without_queries_says_so(tiny_owlv2, images):
    adapter = _labeler(tiny_owlv2, vocabulary=[], threshold=0.0)
    out = adapter(_inputs(images[:3], [None, "it is on the jpg 2019", "a dog"]))
    assert out[0] == {"detections": [], "kept": False, "filter_reason":
                      "no queries: the caption is empty and there is no vocabulary"}
    assert out[1]["detections"] == [] and out[1]["kept"] is False
    assert out[1]["filter_reason"].startswith("no queries: the caption holds no word but stop")
    assert out[2]["detections"] and {d["label"] for d in out[2]["detections"]} <= {"dog", "a dog"}
    alone = adapter(_inputs(images[:1], [""]))  # no query in the whole batch
    assert alone[0]["detections"] == [] and alone[0]["filter_reason"].startswith("no queries")


def test_the_text_tower_runs_once_per_distinct_query(tiny_owlv2, images, monkeypatch):
    from transformers.models.owlv2.modeling_owlv2 import Owlv2Model

    calls = []
    original = Owlv2Model.get_text_features
    monkeypatch.setattr(Owlv2Model, "get_text_features", lambda self, *a, **k:
                        calls.append(k["input_ids"].shape[0]) or original(self, *a, **k))
    templates = ["a photo of a {}", "a {}"]
    adapter = _labeler(tiny_owlv2, templates=templates)
    assert calls == [len(VOCABULARY) * 2]  # the vocabulary, once, in setup
    first = _inputs(images[:2], ["a dog", "a dog on grass"])
    adapter(first)
    # dog, a dog, grass, dog on, on grass, a dog on, dog on grass, a dog on grass
    assert calls[1:] == [8 * 2]
    assert adapter(first) and calls[1:] == [8 * 2]  # all cached: no call
    adapter(_inputs(images[:2], ["dog on grass", "a cat"]))  # only cat, a cat are new
    assert calls[1:] == [8 * 2, 2 * 2]
    adapter(_inputs(images[:1], [None]))  # the vocabulary alone: nothing to encode
    assert calls[1:] == [8 * 2, 2 * 2]

    monkeypatch.setattr(owlv2, "TEXT_CACHE_SIZE", 3)  # bounded: least recent evicted
    adapter(_inputs(images[:1], ["zebra"]))
    assert list(adapter.text_cache) == ["cat", "a cat", "zebra"]


def test_a_long_vocabulary_is_encoded_in_chunks_with_the_same_numbers(tiny_owlv2, images,
                                                                      monkeypatch):
    """Chunked text-tower calls and class-head columns give what one call gives."""
    from labeler.models import owlv2_pseudo

    vocabulary = [f"object {i}" for i in range(12)] + VOCABULARY
    rows = _inputs(images[:3], CAPTIONS[:3])
    whole = _labeler(tiny_owlv2, vocabulary=vocabulary)(rows)
    monkeypatch.setattr(owlv2_pseudo, "TEXT_CHUNK", 5)
    monkeypatch.setattr(owlv2_pseudo, "COSINE_BLOCK", 4 * 3 * 36)  # 4 columns: 3 images x 36 boxes
    chunked = _labeler(tiny_owlv2, vocabulary=vocabulary)(rows)
    for a, b in zip(whole, chunked):
        a_boxes, b_boxes = _by_box(a), _by_box(b)
        assert a_boxes.keys() == b_boxes.keys() and a_boxes
        for box, x in a_boxes.items():
            assert x["label"] == b_boxes[box]["label"]
            assert x["score"] == pytest.approx(b_boxes[box]["score"], abs=1e-6)


def test_vocabulary_file_is_cleaned_and_named_in_the_parameters(tiny_owlv2, tmp_path, caplog):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\nDog\ncat\n  \ndog\nbird\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="labeler.pseudo.vocabulary"):
        adapter = _labeler(tiny_owlv2, vocabulary=[], vocabulary_file=str(path))
    assert adapter.vocabulary.names == ("cat", "Dog", "bird")
    assert adapter.vocab_unit.shape[0] == 3
    assert [r.getMessage() for r in caplog.records] == [
        "vocabulary: dropped 2 blank entries and 2 duplicates ('cat', 'dog'); 3 names kept"]
    params = adapter.parameters()
    assert params["vocabulary_size"] == 3 and len(params["vocabulary_sha256"]) == 12
    assert params["templates"] == ["{}"] and params["image_threshold"] == 0.3
    assert "prompt" not in params and len(adapter.parameters_json()) < 400


def test_with_spec_re_encodes_a_new_vocabulary(tiny_owlv2, images):
    adapter = _labeler(tiny_owlv2)
    variant = adapter.with_spec(_spec(tiny_owlv2, vocabulary=["zebra"], templates=["a {}"],
                                      threshold=0.0))
    assert variant.vocabulary.names == ("zebra",) and variant.vocab_unit.shape[0] == 1
    assert variant.text_cache is not adapter.text_cache
    out = variant(_inputs(images[:1], [None]))[0]
    assert {d["label"] for d in out["detections"]} == {"zebra"}
    assert adapter.vocabulary.names == tuple(VOCABULARY)


@pytest.mark.parametrize("fields, message", [
    ({"prompt": "a cat"}, "not a prompt"),
    ({"labels": ["cat"]}, "not labels"),
    ({"pseudo_label": {"use_captions": False}}, "needs a vocabulary"),
    ({"pseudo_label": {"use_captions": False, "vocabulary": [" "]}}, "needs a vocabulary"),
    ({"pseudo_label": {"vocabulary_file": "BLANK"}}, "holds no class name"),
])
def test_check_spec_errors(tiny_owlv2, tmp_path, fields, message):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    pseudo = {k: (str(blank) if v == "BLANK" else v)
              for k, v in fields.pop("pseudo_label", {}).items()}
    with pytest.raises(ValueError, match=message):
        TaskSpec(task="pseudo-label", model={"family": "owlv2", "source": tiny_owlv2},
                 pseudo_label=pseudo, **fields)


def test_check_spec_accepts_captions_alone_and_an_s3_vocabulary(tiny_owlv2):
    TaskSpec(task="pseudo-label", model={"family": "owlv2", "source": tiny_owlv2})
    TaskSpec(task="pseudo-label", model={"family": "owlv2", "source": tiny_owlv2},
             pseudo_label={"use_captions": False, "vocabulary_file": "s3://bucket/lvis.txt"})


def test_a_row_whose_caption_task_failed_is_an_error_row_naming_it(tiny_owlv2):
    """caption_from: the caption task's failure on a row makes the pseudo-label row an error
    row (counted as an error), not an image 'without queries' or labeled from the vocabulary
    alone; the other rows are labeled from their captions."""
    import json

    from labeler.actors.predictor import Predictor
    from labeler.jobs.stages import TaskTransforms, input_column

    task = _spec(tiny_owlv2, caption_from="caption", threshold=0.0)
    transforms, column = TaskTransforms([task]), input_column(task)
    pixels = [np.asarray(synthetic_image(64, 48, k)) for k in range(3)]
    records = [{"text": "a cat on a sofa", "error": None},
               {"text": None, "error": "model failed: CUDA out of memory"},
               {"text": "a dog", "error": None}]
    batch = {"id": np.array(["a", "b", "c"], dtype=object),
             "uri": np.array(["a", "b", "c"], dtype=object),
             "error": np.array([""] * 3, dtype=object), "width": np.full(3, 64),
             "height": np.full(3, 48), "decode_ms": np.zeros(3),
             "shard": np.zeros(3, dtype=np.int64),
             "record__caption": np.array([json.dumps(r) for r in records], dtype=object),
             column: np.stack([transforms.apply(p)[column] for p in pixels])}
    rows = Predictor(task, input_column=column).records(batch)
    assert rows[1]["error"] == ("caption task 'caption' failed: model failed: CUDA out of "
                                "memory")
    assert rows[1].get("detections") is None and rows[1].get("kept") is None
    assert rows[0]["error"] is None and rows[2]["error"] is None
    words = shipped_word_list(STOP_WORDS_FILE), shipped_word_list(GENERIC_WORDS_FILE)
    assert rows[0]["detections"] and {d["label"] for d in rows[0]["detections"]} <= {
        *caption_queries("a cat on a sofa", *words), *VOCABULARY}
