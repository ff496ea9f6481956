"""One input's records of several tasks made one (labeler.fusion.records): renamed labels,
an image of unknown size, error rows, and parameters kept in bounded memory."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from labeler.fusion import FusionCount, FusionRule, FusionSpec, RecordFuser, fuse_boxes
from labeler.fusion.records import PARAMETERS_KEPT, distinct_names


def _record(boxes, parameters='{"labels": ["cat"]}', error=None, width=640, height=480):
    return {"detections": boxes, "parameters": parameters, "error": error, "warnings": None,
            "width": width, "height": height}


def _box(label, score, x0=10.0):
    return {"label": label, "score": score, "x0": x0, "y0": 10.0, "x1": x0 + 50, "y1": 60.0}


def test_labels_are_renamed_before_fusing_and_in_the_recorded_labels():
    fuser = RecordFuser(["a", "b"], FusionSpec(rename={"a person": "person"}), "detect", "f")
    fields = fuser.fields([_record([_box("person", 0.8)], '{"labels": ["person"]}'),
                           _record([_box("a person", 0.6)], '{"labels": ["a person"]}')],
                          FusionCount())
    assert [(d["label"], round(d["score"], 6)) for d in fields["detections"]] == [("person", 0.7)]
    assert json.loads(fields["parameters"])["labels"] == ["person"]


def test_an_image_of_unknown_size_is_not_clipped():
    boxes = [_box("cat", 0.9, x0=900.0)]
    fields = RecordFuser(["a", "b"], FusionSpec(), "detect", "f").fields(
        [_record(boxes, width=None, height=None), _record(boxes, width=None, height=None)],
        FusionCount())
    assert fields["detections"] == fuse_boxes([boxes, boxes], None, None,
                                              FusionRule((1.0, 1.0)))
    assert fields["detections"][0]["x1"] == pytest.approx(950.0)


def test_a_failed_source_makes_an_error_row_naming_it():
    fields = RecordFuser(["a", "b"], FusionSpec(), "detect", "f").fields(
        [_record([_box("cat", 0.9)]), _record(None, error="empty file (0 bytes)")],
        FusionCount())
    assert (fields["error"], fields["detections"]) == ("b: empty file (0 bytes)", None)


def test_rows_with_parameters_of_their_own_keep_memory_bounded():
    fuser = RecordFuser(["a", "b"], FusionSpec(), "detect", "f")
    for k in range(PARAMETERS_KEPT + 10):  # each row's examples: parameters of its own
        own = json.dumps({"labels": ["cat"], "examples": [{"label": "cat", "box": [k, 0, 9, 9]}]})
        fields = fuser.fields([_record([], own), _record([])], FusionCount())
        assert json.loads(fields["parameters"])["sources"]["a"]["examples"][0]["box"][0] == k
    assert len(fuser._parameters) <= PARAMETERS_KEPT


def test_names_used_twice_are_numbered():
    assert distinct_names(["owl", "owl", "flo", "owl"]) == ["owl", "owl#2", "flo", "owl#3"]


def test_renames_match_case_and_spaces_aside_and_count_the_boxes_they_renamed():
    fuser = RecordFuser(["a", "b"], FusionSpec(rename={"A  Person": "person", "cyclist": "x"}),
                        "detect", "f")
    count = FusionCount()
    fields = fuser.fields([_record([_box("person", 0.8)], '{"labels": ["person"]}'),
                           _record([_box("a person", 0.6)], '{"labels": ["a person"]}')], count)
    assert [d["label"] for d in fields["detections"]] == ["person"]
    assert json.loads(fields["parameters"])["labels"] == ["person"]
    assert count.renamed == {"A  Person": 1}
    total = FusionCount()
    total.add(count)
    total.add(count)
    assert total.renamed == {"A  Person": 2}


def test_a_label_is_spelled_as_the_first_task_lists_it_in_every_image():
    """Task a lists `Dog`, task b `dog`: a dog only b found is written `Dog` too, as in the
    images both found it, and `labels` lists it once, so an export has one category."""
    fuser = RecordFuser(["a", "b"], FusionSpec(), "detect", "f")
    a, b = '{"labels": ["Dog", "cat"]}', '{"labels": ["dog", "Cat ", "owl"]}'
    both = fuser.fields([_record([_box("Dog", 0.9)], a), _record([_box("dog", 0.8)], b)],
                        FusionCount())
    only_b = fuser.fields([_record([], a), _record([_box("dog", 0.8), _box("Cat ", 0.7, 100)], b)],
                          FusionCount())
    assert [d["label"] for d in both["detections"]] == ["Dog"]
    assert [d["label"] for d in only_b["detections"]] == ["Dog", "cat"]
    assert json.loads(only_b["parameters"])["labels"] == ["Dog", "cat", "owl"]


def test_the_online_fused_record_has_the_boxes_labeler_fuse_writes(tmp_path):
    """The online API fuses the models' unrounded records; `labeler fuse` the float32 numbers
    of their part files. Florence-2's corners, (bin + 0.5) * 640 / 1000 here, put IoUs at
    the threshold, where the last digits decide whether two boxes fuse: the online record
    must fuse what the batch reads."""
    from test_export import _record, _write_job

    from labeler.cli import main

    boxes = {"a": [("cat", 0.5003932098579195, 435.52, 158.64, 621.12, 389.04),
                   ("cat", 0.6001683956152247, 403.52, 77.04, 614.72, 461.04)],
             "b": [("cat", 0.8002282911211752, 345.92, 374.64, 525.12, 446.64)]}
    records = [_record("1.jpg", "/in/1.jpg", "detect", name, {"labels": ["cat"]}, (640, 480),
                       boxes[name], error=None, warnings=None) for name in ("a", "b")]
    job = _write_job(tmp_path / "job", records, ["a", "b"], 1)
    assert main(["fuse", job, "--tasks", "a,b", "--iou", "0.5", "--out",
                 str(tmp_path / "fused")]) == 0
    written = pq.read_table(tmp_path / "fused" / "fused" / "part-00000.parquet").to_pylist()

    online = RecordFuser(["a", "b"], FusionSpec(iou=0.5), "detect", "fused").record(
        records, FusionCount())
    keys = ("label", "score", "x0", "y0", "x1", "y1")
    assert len(written) == 1 and len(written[0]["detections"]) == 3
    assert [[d[k] for k in keys] for d in online["detections"]] == [
        [d[k] for k in keys] for d in written[0]["detections"]]
    assert (online["id"], online["model"], online["parameters"]) == (
        "1.jpg", "a+b", written[0]["parameters"])
