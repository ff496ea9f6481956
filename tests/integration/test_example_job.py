"""A detect-by-example job whose inputs bring boxes drawn on them (a manifest's `examples`
column): annotation completion over Ray, one row per input, on the tiny OWLv2.

Each row's boxes are what the adapter finds with those examples on the same pixels (the
adapter is checked against image_guided_detection in tests/models/test_owlv2_examples.py);
an input without examples uses the task's query image; one whose boxes do not fit its
image is an error row saying so.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from PIL import Image

from labeler.config import load_job_spec
from labeler.jobs.runner import run_job
from labeler.models.base import Example, ImageInput
from labeler.models.owlv2 import Owlv2ExampleDetector
from labeler.testing.samples import synthetic_image

THRESHOLD = 0.05
DRAWN = [{"label": "cup", "box": [10, 10, 60, 50]}, {"label": "plate", "box": [70, 20, 150, 90]},
         {"label": "cup", "box": [100, 60, 140, 110]}]


@pytest.fixture(scope="module")
def job(ray_local, tiny_owlv2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("example_job")
    for i, name in enumerate(("drawn.png", "outside.png", "plain.png")):
        synthetic_image(160, 120, seed=30 + i).save(folder / name)
    synthetic_image(64, 80, seed=7).save(folder / "red_mug.png")
    rows = [{"uri": "drawn.png", "examples": DRAWN},
            {"uri": "outside.png", "examples": [{"label": "cup", "box": [100, 10, 170, 50]}]},
            {"uri": "plain.png"}]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = load_job_spec(None, input=str(manifest), output=str(folder / "out"),
                         task="detect-by-example", family="owlv2", model=tiny_owlv2,
                         query_image=str(folder / "red_mug.png"), threshold=THRESHOLD)
    task = spec.tasks[0]
    spec = spec.model_copy(update={"tasks": [task.model_copy(update={
        "resources": task.resources.model_copy(update={"num_cpus": 0.5})})]})
    summary = run_job(spec, progress=False)
    table = pads.dataset(folder / "out", format="parquet").to_table()
    # A URI manifest's ids are its rows' URIs, resolved: key the rows by file name.
    return folder, task, summary, {Path(r["id"]).name: r for r in table.to_pylist()}


def _adapter_detections(task, path, examples=()) -> list[dict]:
    adapter = Owlv2ExampleDetector(task)
    adapter.setup(torch.device("cpu"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    (out,) = adapter([ImageInput(pixels, pixels.shape[1], pixels.shape[0], examples=examples)])
    return out["detections"]


def _same(got, want):
    assert [d["label"] for d in got] == [d["label"] for d in want]
    for a, b in zip(got, want):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        # Pixels: float32 sums in another order (a batch of another size, other threads)
        # moved a corner of 77.49 px by 1.07e-4 in one CI run.
        for key in ("x0", "y0", "x1", "y1"):
            assert a[key] == pytest.approx(b[key], abs=1e-3), key


def test_each_input_is_searched_for_its_own_boxes(job):
    folder, task, summary, rows = job
    assert summary.inputs == 3 and len(rows) == 3
    drawn = rows["drawn.png"]
    assert drawn["error"] is None
    want = _adapter_detections(task, folder / "drawn.png",
                               tuple(Example(e["label"], tuple(e["box"])) for e in DRAWN))
    assert want and {d["label"] for d in want} <= {"cup", "plate"}
    _same(drawn["detections"], want)
    assert json.loads(drawn["parameters"])["examples"] == [
        {"label": e["label"], "box": [float(v) for v in e["box"]]} for e in DRAWN]
    plain = rows["plain.png"]
    _same(plain["detections"], _adapter_detections(task, folder / "plain.png"))
    assert {d["label"] for d in plain["detections"]} == {"red_mug"}
    assert "examples" not in json.loads(plain["parameters"])


def test_boxes_that_do_not_fit_their_image_make_an_error_row(job):
    _, _, summary, rows = job
    outside = rows["outside.png"]
    assert outside["error"] == ("examples.0.box: [100, 10, 170, 50] is not a box inside the "
                                "160x120 image")
    assert outside["detections"] is None
    assert summary.errors == 1
