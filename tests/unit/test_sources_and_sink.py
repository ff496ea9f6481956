"""Input planning and the sharded Parquet sink: names, commit, resume, conflicts."""

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.sinks.parquet import OutputConflict, ShardedParquetSink
from labeler.sources.files import plan_inputs


def test_folder_listing_is_recursive_sorted_and_sharded(tmp_path):
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "notes.txt", "sub/d.tiff"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = plan_inputs(str(tmp_path), files_per_shard=3)
    assert [i.id for i in items] == ["a.PNG", "b.jpg", "sub/c.webp", "sub/d.tiff"]
    assert [i.shard for i in items] == [0, 0, 0, 1]
    assert items[0].uri == str(tmp_path / "a.PNG")
    globbed = plan_inputs(str(tmp_path / "**" / "*.webp"), files_per_shard=3)
    assert [i.id for i in globbed] == ["sub/c.webp"]


def _rows(ids, shard, task="detect"):
    return pa.Table.from_pylist([
        {"id": i, "uri": f"/in/{i}", "task": "detect", "task_name": task, "model": "m",
         "model_family": "owlv2", "parameters": "{}", "shard": shard} for i in ids
    ], schema=OUTPUT_SCHEMA)


def test_a_shard_is_committed_only_when_complete(tmp_path):
    sink = ShardedParquetSink(tmp_path / "out", {0: 3, 1: 1}, ["detect"], "fp")
    sink.add(_rows(["b", "a"], 0))
    assert not (tmp_path / "out/detect/part-00000.parquet").exists()
    assert pads.dataset(tmp_path / "out", format="parquet").count_rows() == 0
    sink.add(pa.concat_tables([_rows(["c"], 0), _rows(["d"], 1)]))
    assert sink.pending_shards() == set()
    sink.finish({"rows": 4})
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == ["a", "b", "c", "d"]
    assert "shard" not in table.column_names
    assert (tmp_path / "out/_SUCCESS").exists()


def test_rerun_skips_committed_shards_and_refuses_other_jobs(tmp_path):
    sink = ShardedParquetSink(tmp_path / "out", {0: 1, 1: 1}, ["detect"], "fp")
    sink.add(_rows(["a"], 0))  # shard 1 never arrives: the run "crashed"
    again = ShardedParquetSink(tmp_path / "out", {0: 1, 1: 1}, ["detect"], "fp")
    assert again.pending_shards() == {1}
    with pytest.raises(OutputConflict, match="different job"):
        ShardedParquetSink(tmp_path / "out", {0: 1, 1: 1}, ["detect"], "other-fp")
    fresh = ShardedParquetSink(tmp_path / "out", {0: 1, 1: 1}, ["detect"], "other-fp",
                               overwrite=True)
    assert fresh.pending_shards() == {0, 1}


def test_a_foreign_non_empty_folder_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(OutputConflict, match="not written by labeler"):
        ShardedParquetSink(tmp_path / "out", {0: 1}, ["detect"], "fp")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
