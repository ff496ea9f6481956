"""The Arrow schema derived from the record model holds the documented contract."""

import pyarrow as pa

from labeler.schemas import RECORD_SCHEMA, Record


def test_contract_columns_and_types():
    s = RECORD_SCHEMA
    for name in ("id", "uri", "task", "task_name", "model", "model_family", "parameters"):
        assert s.field(name).type == pa.string() and not s.field(name).nullable
    assert s.field("width").type == pa.int32() and s.field("height").type == pa.int32()
    assert s.field("error").type == pa.string() and s.field("error").nullable
    det = s.field("detections").type
    assert isinstance(det, pa.ListType)
    assert [f.name for f in det.value_type] == ["label", "score", "x0", "y0", "x1", "y1", "polygon",
                                             "objectness", "track_id"]
    for name in ("score", "x0", "y0", "x1", "y1", "objectness"):  # docs/schema.md: float32
        assert det.value_type.field(name).type == pa.float32(), name
    assert det.value_type.field("polygon").type.value_type == pa.float32()
    ocr = s.field("ocr_regions").type.value_type
    for name in ("x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3"):
        assert ocr.field(name).type == pa.float32(), name
    assert det.value_type.field("track_id").type == pa.int32()
    assert det.value_type.field("track_id").nullable
    assert s.metadata[b"labeler.schema_version"] == b"2"


def test_schema_and_model_list_the_same_fields():
    assert RECORD_SCHEMA.names == list(Record.model_fields)


def test_a_record_round_trips_through_arrow():
    record = Record(id="a.jpg", uri="/x/a.jpg", width=4, height=3, task="detect",
                    task_name="detect", model="m", model_family="owlv2", parameters="{}",
                    detections=[{"label": "cat", "score": 0.5, "x0": 0, "y0": 1, "x1": 2, "y1": 3}])
    table = pa.Table.from_pylist([record.model_dump()], schema=RECORD_SCHEMA)
    back = Record.model_validate(table.to_pylist()[0])
    assert back == record
