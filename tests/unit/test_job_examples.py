"""An input's `examples` (boxes drawn on it) for detect-by-example jobs: parsing, the plan's
checks before any work (dry runs: no Ray), and the inputs' identity."""

import json

import numpy as np
import pytest

from labeler.config import SpecError, load_job_spec
from labeler.jobs.examples import examples_text, parse_examples
from labeler.jobs.identity import input_identities
from labeler.jobs.runner import run_job
from labeler.models.base import Example
from labeler.sources import InputItem

CUP = {"label": "cup", "box": [1, 2, 30, 40]}


def test_parse_examples_checks_each_box_against_its_image():
    assert parse_examples(json.dumps([CUP, {"label": " plate ", "box": [0, 0, 64, 48.5]}]),
                          64, 49) == (Example("cup", (1.0, 2.0, 30.0, 40.0)),
                                      Example("plate", (0.0, 0.0, 64.0, 48.5)))
    for text, message in [
        ("[{label", "examples: not valid JSON"),
        ("[]", "a non-empty list"),
        ('{"label": "cup"}', "a non-empty list"),
        (json.dumps([{"box": [1, 2, 3, 4]}]), "examples.0.label: a non-empty text"),
        (json.dumps([CUP, {"label": "a", "box": [1, 2, 3]}]), r"examples.1.box: \[x0, y0"),
        (json.dumps([{"label": "a", "box": [1, 2, "3", 4]}]), r"examples.0.box: \[x0, y0"),
        (json.dumps([{"label": "a", "box": [1, 2, 65, 4]}]), "not a box inside the 64x49 image"),
        (json.dumps([{"label": "a", "box": [5, 2, 5, 4]}]), "not a box inside"),
        (json.dumps([CUP] * 65), "65 boxes, more than 64"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_examples(text, 64, 49)


def test_examples_text_of_what_sources_hand_over():
    assert examples_text(None) == examples_text([]) == examples_text("") == ""
    assert json.loads(examples_text([CUP])) == [CUP]
    assert examples_text('[{"label": "x"}]') == '[{"label": "x"}]'  # checked by the actor
    # A Parquet list<struct> column reaches the planner as NumPy arrays inside.
    assert json.loads(examples_text([{"label": "cup", "box": np.array([1.0, 2.0, 3.0, 4.0])}])) \
        == [{"label": "cup", "box": [1.0, 2.0, 3.0, 4.0]}]


def test_examples_join_the_identity_only_of_inputs_that_have_them():
    plain = InputItem("a.jpg", "/d/a.jpg", 0)
    drawn = InputItem("b.jpg", "/d/b.jpg", 0, metadata={"examples": [CUP]})
    assert input_identities([plain, drawn]) == [["a.jpg", "/d/a.jpg", None],
                                                ["b.jpg", "/d/b.jpg", None, json.dumps([CUP])]]


def _manifest(tmp_path, rows) -> str:
    from labeler.testing.samples import synthetic_image

    for row in rows:
        synthetic_image(64, 48, seed=1).save(tmp_path / row["uri"])
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _dry_run(tmp_path, manifest, **task):
    model = tmp_path / "model"  # a dry run loads no weights, but checks the folder is one
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    spec = load_job_spec(None, input=manifest, output=str(tmp_path / "out"),
                         task="detect-by-example", family="owlv2", model=str(model))
    spec = spec.model_copy(update={"tasks": [spec.tasks[0].model_copy(update=task)]})
    return run_job(spec, progress=False, dry_run=True)


def test_a_job_without_a_query_needs_examples_on_every_input(tmp_path):
    both = _manifest(tmp_path, [{"uri": "a.png", "examples": [CUP]},
                                {"uri": "b.png", "examples": [CUP, CUP]}])
    assert _dry_run(tmp_path, both).dry_run
    some = _manifest(tmp_path, [{"uri": "a.png", "examples": [CUP]}, {"uri": "b.png"},
                                {"uri": "c.png", "examples": []}])
    with pytest.raises(SpecError, match=r"tasks.0: detect-by-example needs a query: .*an "
                                        r"`examples` field on every input .* 2 inputs have "
                                        r"none \(first: "):
        _dry_run(tmp_path, some)
    query = tmp_path / "q.png"
    query.write_bytes((tmp_path / "a.png").read_bytes())
    assert _dry_run(tmp_path, some, query_image=str(query)).dry_run  # the others use it


def test_a_tiled_task_refuses_inputs_with_examples(tmp_path):
    from labeler.config import TilingSpec

    manifest = _manifest(tmp_path, [{"uri": "a.png", "examples": [CUP]}])
    query = tmp_path / "q.png"
    query.write_bytes((tmp_path / "a.png").read_bytes())
    with pytest.raises(SpecError, match="tasks.0.tiles: inputs bring examples"):
        _dry_run(tmp_path, manifest, query_image=str(query), tiles=TilingSpec())
