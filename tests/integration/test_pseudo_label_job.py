"""OWL-ST pseudo-labelling as one command on a real local Ray: captions from .txt files
beside the images, a curated vocabulary file, the report; and captions made by a
captioning task of the same job."""

import json

import pyarrow.dataset as pads
import pytest
import torch
from PIL import Image
from transformers import Owlv2ForObjectDetection, Owlv2Processor

from labeler.cli import main
from labeler.models.owlv2 import box_corners
from labeler.pseudo.queries import (
    GENERIC_WORDS_FILE,
    STOP_WORDS_FILE,
    caption_queries,
    shipped_word_list,
)
from labeler.testing.samples import synthetic_image

SIZES = [(120, 80), (64, 96), (90, 90), (70, 50)]
# image stem -> caption file text (None: no .txt beside it)
CAPTIONS = {"beach": "A brown dog running on the beach, stock photo.jpg",
            "sofa": "Two cats asleep on a red sofa",
            "blank": "",
            "nocaption": None}
VOCABULARY_FILE = "cat\n\ndog\nCat\n  red car \n"
VOCABULARY = ["cat", "dog", "red car"]  # cleaned: blanks and a case-insensitive repeat dropped


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captioned")
    for seed, ((stem, caption), (w, h)) in enumerate(zip(CAPTIONS.items(), SIZES)):
        synthetic_image(w, h, seed=seed).save(folder / f"{stem}.png")  # lossless: same pixels
        if caption is not None:
            (folder / f"{stem}.txt").write_text(caption)
    (folder.parent / "vocabulary.txt").write_text(VOCABULARY_FILE)
    return folder


def _reference(model_dir, image: Image.Image, queries: list[str], threshold: float,
               captioned: int, weight: float = 0.3):
    """The documented OWLv2 usage on one image with these queries (processor -> model),
    then the task's rules in plain code: sigmoid, vocabulary columns x weight when the
    caption gave queries, best query per box, score > threshold, padded-square boxes clipped
    (those left without area, wholly in the padding, dropped).
    Each box also lists the queries tied with its best (the tiny model's random weights
    saturate many scores at exactly 1.0, where any of them is the right label)."""
    processor = Owlv2Processor.from_pretrained(model_dir)
    model = Owlv2ForObjectDetection.from_pretrained(model_dir).eval()
    inputs = processor(text=[queries], images=image, truncation=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    scores = torch.sigmoid(outputs.logits[0])
    if captioned:
        scores[:, captioned:] *= weight
    best, label = scores.max(dim=-1)
    corners = box_corners(outputs.pred_boxes[0]) * max(image.size)
    w, h = image.size
    dets = []
    for p in torch.argsort(best, descending=True).tolist():
        if best[p] <= threshold:
            break
        x0, y0, x1, y1 = corners[p].tolist()
        tied = {queries[q] for q in (scores[p] >= best[p] - 1e-6).nonzero()[:, 0].tolist()}
        box = (min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h))
        if box[2] > box[0] and box[3] > box[1]:  # else wholly in the padding: dropped
            dets.append({"labels": tied, "score": best[p].item(), "box": box})
    return dets


def _canonical(detections: list[dict]) -> list[dict]:
    """Detections ordered by score, then box (boxes with equal scores come in any order)."""
    return sorted(detections, key=lambda d: (-round(d["score"], 4),
                                             *(round(v, 2) for v in d["box"])))


def test_pseudo_label_job_matches_the_per_image_reference_and_reports(
        ray_local, captioned_folder, tiny_owlv2, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--task", "pseudo-label", "--family", "owlv2", "--model", tiny_owlv2,
                 "--input", str(captioned_folder), "--caption-column", "caption",
                 "--vocabulary", str(captioned_folder.parent / "vocabulary.txt"),
                 "--box-threshold", "0.2", "--image-threshold", "0.5",
                 "--output", str(out), "--batch-size", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = {r["id"]: r for r in pads.dataset(out / "pseudo-label", format="parquet")
            .to_table().to_pylist()}
    assert set(rows) == {f"{stem}.png" for stem in CAPTIONS}
    assert rows["beach.png"]["caption"] == CAPTIONS["beach"]  # carried from the .txt

    words = shipped_word_list(STOP_WORDS_FILE), shipped_word_list(GENERIC_WORDS_FILE)
    total_boxes = 0
    for (stem, caption), seed in zip(CAPTIONS.items(), range(len(SIZES))):
        row = rows[f"{stem}.png"]
        assert row["error"] is None and row["task"] == "pseudo-label"
        captioned = caption_queries(caption, *words)
        image = Image.open(captioned_folder / f"{stem}.png").convert("RGB")
        expected = _reference(tiny_owlv2, image, captioned + VOCABULARY, 0.2, len(captioned))
        got = [{**d, "box": (d["x0"], d["y0"], d["x1"], d["y1"])} for d in row["detections"]]
        assert len(got) == len(expected)
        for have, want in zip(_canonical(got), _canonical(expected)):
            assert have["label"] in want["labels"]
            assert abs(have["score"] - want["score"]) < 1e-4
            assert max(abs(a - b) for a, b in zip(have["box"], want["box"])) < 1e-3
        assert all(0.0 <= d["objectness"] <= 1.0 for d in got)
        assert [d["score"] for d in got] == sorted((d["score"] for d in got), reverse=True)
        best = expected[0]["score"] if expected else None
        assert row["kept"] == (best is not None and best >= 0.5)
        assert (row["filter_reason"] is None) == row["kept"]
        total_boxes += len(got)
    # Captions the stop/generic lists empty out, or none at all: vocabulary alone, unscaled.
    assert caption_queries("", *words) == []

    report = json.loads((out / "pseudo-label" / "_report.json").read_text())
    assert report["images"] == 4 and report["errors"] == 0 and report["boxes"] == total_boxes
    assert report["kept"] == sum(r["kept"] for r in rows.values())
    assert [t["threshold"] for t in report["thresholds"]] == [0.1, 0.3, 0.5, 0.7]
    assert "pseudo-label: 4 images" in printed and "top labels:" in printed


def test_captions_can_come_from_a_captioning_task_of_the_same_job(
        ray_local, captioned_folder, tiny_owlv2, tiny_model, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({
        "input": {"path": str(captioned_folder)},
        "output": {"path": str(tmp_path / "out")},
        "tasks": [
            {"task": "caption", "model": {"family": "florence2", "source": tiny_model("florence2")},
             "prompt": "<DETAILED_CAPTION>", "generation": {"max_new_tokens": 12},
             "resources": {"batch_size": 4, "num_cpus": 0.5}},
            {"task": "pseudo-label", "model": {"family": "owlv2", "source": tiny_owlv2},
             "threshold": 0.0, "pseudo_label": {"caption_from": "caption"},
             "resources": {"batch_size": 4, "num_cpus": 0.5}},
        ],
    }))  # JSON is YAML
    assert main(["run", str(spec), "--no-progress"]) == 0
    table = pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()
    captions = {r["id"]: r["text"] for r in table if r["task"] == "caption"}
    words = shipped_word_list(STOP_WORDS_FILE), shipped_word_list(GENERIC_WORDS_FILE)
    for row in (r for r in table if r["task"] == "pseudo-label"):
        queries = set(caption_queries(captions[row["id"]], *words))
        if queries:
            assert row["detections"] and {d["label"] for d in row["detections"]} <= queries
        else:
            assert row["detections"] == [] and not row["kept"]
            assert "no queries" in row["filter_reason"]
