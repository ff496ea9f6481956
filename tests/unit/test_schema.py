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


def test_as_stored_gives_the_numbers_a_parquet_row_reads_back(tmp_path):
    """The online API answers with as_stored records: the same numbers (float32) and fields
    as the batch job's Parquet row of the same result."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labeler.schemas import RECORD_SCHEMA, as_stored

    record = {"id": "a", "uri": "a.jpg", "task": "detect", "task_name": "detect",
              "model": "m", "model_family": "owlv2", "parameters": "{}", "detections": [
        {"label": "cat", "score": 0.87345123291, "x0": 1.123456789, "y0": 2.5, "x1": 300.1,
         "y1": 4000.0001}],
        "ocr_regions": [{"text": "A", "x0": 0.1, "y0": 0.2, "x1": 1.3, "y1": 0.2, "x2": 1.3,
                         "y2": 2.7, "x3": 0.1, "y3": 2.7}]}
    pq.write_table(pa.Table.from_pylist([record], schema=RECORD_SCHEMA), tmp_path / "r.parquet")
    (row,) = pq.read_table(tmp_path / "r.parquet").to_pylist()
    stored = as_stored(record)
    assert stored["detections"] == row["detections"]
    assert stored["ocr_regions"] == row["ocr_regions"]
    assert stored["detections"][0]["score"] != record["detections"][0]["score"]
    assert stored["id"] == "a" and "frame_index" not in stored  # other fields as they were
