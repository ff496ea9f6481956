"""Input planning and the sharded Parquet sink: names, commit, resume, conflicts."""

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.dataset as pads
import pytest

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.config import SpecError
from labeler.sinks.parquet import MissingParts, OutputConflict, ShardedParquetSink
from labeler.sources.files import plan_inputs


def test_folder_listing_is_recursive_sorted_and_sharded(tmp_path):
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "notes.txt", "sub/d.tiff", "sub/e.HEIC",
                 "sub/f.avif"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    items = plan_inputs(str(tmp_path), files_per_shard=3)
    assert [i.id for i in items] == ["a.PNG", "b.jpg", "sub/c.webp", "sub/d.tiff", "sub/e.HEIC",
                                     "sub/f.avif"]
    assert [i.shard for i in items] == [0, 0, 0, 1, 1, 1]
    assert items[0].uri == str(tmp_path / "a.PNG")
    globbed = plan_inputs(str(tmp_path / "**" / "*.webp"), files_per_shard=3)
    assert [i.id for i in globbed] == ["sub/c.webp"]


def test_hidden_files_and_folders_are_not_inputs(tmp_path):
    """macOS writes `._photo.jpg` beside each file on a foreign disk (and its tar puts them
    in archives): each was an input and an error row ("not a recognised image format"), a
    tar's all under the id `shard.tar/`. Skipped, as a glob's `*`, Hugging Face datasets
    and webdataset skip hidden names."""
    from labeler.sources import plan_source

    for name in ["a.jpg", "._a.jpg", ".DS_Store", ".thumbnails/t.jpg", "sub/.hidden/b.jpg",
                 "sub/c.jpg", "sub/._c.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    _tar(tmp_path / "s.tar", {"k1.jpg": b"JPEG-1", "._k1.jpg": b"\0\5\x16\7",
                              "d/._k2.jpg": b"\0", "d/k2.jpg": b"JPEG-2"})
    assert [i.id for i in plan_source(str(tmp_path), files_per_shard=8).items] == [
        "a.jpg", "s.tar/k1", "s.tar/d/k2", "sub/c.jpg"]  # a tar's members in tar order
    # A hidden folder named as the input itself is listed.
    assert [i.id for i in plan_inputs(str(tmp_path / "sub" / ".hidden"), 8)] == ["b.jpg"]


def _rows(ids, shard, task="detect", part=0, last=True):
    return pa.Table.from_pylist([
        {"id": i, "uri": f"/in/{i}", "task": "detect", "task_name": task, "model": "m",
         "model_family": "owlv2", "parameters": "{}", "shard": shard, "part_index": part,
         "last_part": last} for i in ids
    ], schema=OUTPUT_SCHEMA)


def test_an_input_of_several_rows_completes_when_its_last_part_and_all_before_arrived(tmp_path):
    """Video rows: the row count of an input is known only from its last part, which may
    arrive before earlier parts (actors finish out of order)."""
    sink = ShardedParquetSink(tmp_path / "out", {0: 2}, ["detect"], "fp")
    sink.add(_rows(["v1"], 0, part=2, last=True))  # v1 has 3 rows; 2 still missing
    sink.add(_rows(["v2"], 0, part=0, last=True))  # v2: one row (an error row, say)
    sink.add(_rows(["v1"], 0, part=0, last=False))
    assert sink.pending_shards() == {0}
    sink.add(_rows(["v1"], 0, part=1, last=False))
    assert sink.pending_shards() == set()
    table = pq.read_table(tmp_path / "out/detect/part-00000.parquet")
    assert table.column("id").to_pylist() == ["v1", "v1", "v1", "v2"]
    assert not {"shard", "part_index", "last_part"} & set(table.column_names)


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


def test_overwrite_empties_an_output_that_is_a_link_to_a_folder(tmp_path):
    """--overwrite on an output reached through a symlink (a /data/labels link, say) starts
    afresh too: the same job's committed shards are labeled again (the model's weights
    changed, say), and another job's output is replaced rather than refused."""
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    sink = ShardedParquetSink(tmp_path / "out", {0: 1, 1: 1}, ["detect"], "fp")
    sink.add(_rows(["a"], 0))
    fresh = ShardedParquetSink(tmp_path / "out", {0: 1, 1: 1}, ["detect"], "fp",
                               overwrite=True)
    assert fresh.pending_shards() == {0, 1}
    assert not (tmp_path / "real/detect/part-00000.parquet").exists()
    other = ShardedParquetSink(tmp_path / "out", {0: 1}, ["detect"], "other-fp",
                               overwrite=True)
    assert other.pending_shards() == {0}
    assert (tmp_path / "out").is_symlink()


def test_a_second_run_writing_the_same_output_at_once_keeps_its_staged_file(tmp_path):
    """The same job started twice on one local output: each commit stages its shard under a
    dot-name of its own, so neither truncates the file the other is writing nor renames it
    away (which failed the other run with 'Failed renaming ... No such file')."""
    sink = ShardedParquetSink(tmp_path / "out", {0: 1}, ["detect"], "fp")
    (tmp_path / "out/detect").mkdir()
    other = tmp_path / "out/detect/.part-00000.parquet.tmp"  # the other run, mid-write
    other.write_bytes(b"half a shard")
    sink.add(_rows(["a"], 0))
    assert other.read_bytes() == b"half a shard"
    assert pq.read_table(tmp_path / "out/detect/part-00000.parquet").column("id").to_pylist() \
        == ["a"]
    staged = sorted(p.name for p in (tmp_path / "out/detect").iterdir())
    assert staged == [".part-00000.parquet.tmp", "part-00000.parquet"]


def test_a_foreign_non_empty_folder_is_not_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(OutputConflict, match="not written by labeler"):
        ShardedParquetSink(tmp_path / "out", {0: 1}, ["detect"], "fp")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def _tar(path, members):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_members_are_byte_ranges_with_their_metadata(tmp_path):
    import json

    from labeler.sources import plan_source
    from labeler.storage import read_bytes

    _tar(tmp_path / "00000.tar", {"k1.jpg": b"JPEG-1", "k1.json": json.dumps({"a": 1, "prompt": "p"}).encode(),
                                  "k1.txt": b" cap one \n", "k2.png": b"PNG-2", "k3.json": b"{}"})
    (tmp_path / "loose.jpg").write_bytes(b"loose")
    plan = plan_source(str(tmp_path), files_per_shard=2)
    assert [i.id for i in plan.items] == ["00000.tar/k1", "00000.tar/k2", "loose.jpg"]
    assert [read_bytes(i.uri) for i in plan.items] == [b"JPEG-1", b"PNG-2", b"loose"]
    assert [i.prompt for i in plan.items] == ["p", None, None]
    assert [i.shard for i in plan.items] == [0, 0, 1]
    assert plan.metadata.to_pylist() == [{"id": "00000.tar/k1", "a": 1, "caption": "cap one"},
                                         {"id": "00000.tar/k2", "a": None, "caption": None},
                                         {"id": "loose.jpg", "a": None, "caption": None}]


def test_a_byte_range_past_the_end_reads_as_truncated(tmp_path):
    from labeler.storage import byte_range_uri, read_bytes

    (tmp_path / "f").write_bytes(b"0123456789")
    assert read_bytes(byte_range_uri(str(tmp_path / "f"), 2, 3)) == b"234"
    with pytest.raises(OSError, match="truncated"):
        read_bytes(byte_range_uri(str(tmp_path / "f"), 8, 5))


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_manifests_give_ids_prompts_and_carried_columns(tmp_path, kind):
    import json

    import pyarrow.parquet as pq

    from labeler.sources import plan_source
    from labeler.storage import read_bytes

    rows = [{"path": "a.jpg", "key": "x", "prompt": "cats", "score": 0.5},
            {"path": str(tmp_path / "b.jpg"), "key": "y", "prompt": None, "score": 0.7},
            {"path": None, "key": "z", "prompt": None, "score": None}]
    if kind == "jsonl":
        (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    plan = plan_source(str(tmp_path / f"m.{kind}"), files_per_shard=10)
    assert [(i.id, i.prompt) for i in plan.items] == [("x", "cats"), ("y", None), ("z", None)]
    assert plan.items[0].uri == str(tmp_path / "a.jpg")  # relative to the manifest
    assert plan.metadata.column("score").to_pylist() == [0.5, 0.7, None]
    with pytest.raises(FileNotFoundError, match="row 2 of the manifest has no path"):
        read_bytes(plan.items[2].uri)


def test_manifest_without_uri_column_or_with_duplicate_ids_is_refused(tmp_path):
    from labeler.config import SpecError
    from labeler.sources import plan_source
    from labeler.storage import StorageError

    (tmp_path / "m.jsonl").write_text('{"name": "a.jpg"}\n')
    with pytest.raises(StorageError, match="no URI column"):
        plan_source(str(tmp_path / "m.jsonl"), 4)
    (tmp_path / "m.jsonl").write_text('{"uri": "a.jpg", "id": 1}\n{"uri": "b.jpg", "id": 1}\n')
    with pytest.raises(SpecError, match="input id '1' appears twice"):
        plan_source(str(tmp_path / "m.jsonl"), 4)


def test_carried_columns_are_written_beside_the_records(tmp_path):
    from labeler.sources.items import InputItem, metadata_table

    items = [InputItem(id_, f"/in/{id_}", shard, metadata={"source": f"s{k}", "uri": f"u{k}"})
             for k, (id_, shard) in enumerate([("a", 0), ("b", 0), ("c", 1)], start=1)]
    meta = metadata_table(items)  # the input's `uri` field is carried as input_uri
    meta = meta.append_column("shard", pa.array([i.shard for i in items], pa.int64()))
    sink = ShardedParquetSink(tmp_path / "out", {0: 2, 1: 1}, ["detect"], "fp", metadata=meta)
    sink.add(pa.concat_tables([_rows(["b", "a"], 0), _rows(["c"], 1)]))
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    got = {r["id"]: (r["source"], r["input_uri"], r["uri"]) for r in table.to_pylist()}
    assert got == {"a": ("s1", "u1", "/in/a"), "b": ("s2", "u2", "/in/b"), "c": ("s3", "u3", "/in/c")}


def test_a_text_file_beside_an_image_is_its_caption(tmp_path):
    from labeler.sources import plan_source

    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a.txt").write_text("  A dog on a beach.\n")
    (tmp_path / "notes.txt").write_text("no image has this stem")
    (tmp_path / "sub" / "c.txt").write_bytes("\ufeffZwei Katzen, café".encode("utf-8"))  # a BOM
    plan = plan_source(str(tmp_path), files_per_shard=10)
    assert [i.id for i in plan.items] == ["a.jpg", "b.png", "sub/c.jpg"]
    assert plan.metadata.column("caption").to_pylist() == ["A dog on a beach.", None,
                                                          "Zwei Katzen, café"]
    # A glob or a file path names the images only: their captions are found all the same.
    plan = plan_source(str(tmp_path / "*.*g"), files_per_shard=10)
    assert plan.metadata.column("caption").to_pylist() == ["A dog on a beach.", None]
    plan = plan_source(str(tmp_path / "sub" / "c.jpg"), files_per_shard=10)
    assert plan.metadata.column("caption").to_pylist() == ["Zwei Katzen, café"]
    # Text in another encoding would become other queries: refused, naming the file.
    (tmp_path / "a.txt").write_bytes("un café".encode("latin-1"))
    with pytest.raises(SpecError, match=re.escape(f"the caption file {tmp_path / 'a.txt'} is "
                                                  f"not UTF-8 text")):
        plan_source(str(tmp_path), files_per_shard=10)


def _batch(rows):
    """A record table of (id, task name, shard, width) rows."""
    return pa.Table.from_pylist([
        {"id": id_, "uri": f"/in/{id_}", "width": width, "task": "detect", "task_name": task,
         "model": "m", "model_family": "owlv2", "parameters": "{}", "shard": shard,
         "part_index": 0, "last_part": True} for id_, task, shard, width in rows
    ], schema=OUTPUT_SCHEMA)


def test_each_row_of_a_batch_lands_in_its_tasks_shard_with_its_own_values(tmp_path):
    """A batch may hold rows of several shards and tasks: in runs (a batch that crosses a
    shard boundary; a several-task job's rows, task by task) or interleaved. Every file
    gets exactly its rows, each with its own fields (width tells them apart)."""
    sink = ShardedParquetSink(tmp_path / "out", {0: 3, 1: 3, 2: 3}, ["a", "b"], "fp")
    sink.add(_batch([("i0", "a", 0, 100), ("i1", "a", 0, 101), ("i2", "a", 1, 102),  # runs
                     ("i3", "b", 0, 103), ("i4", "b", 1, 104), ("i5", "b", 1, 105),
                     ("j6", "a", 2, 106), ("j7", "b", 2, 107),  # interleaved
                     ("j8", "a", 2, 108), ("j9", "b", 2, 109)]))
    assert sink.pending_shards() == {0, 1, 2}  # a row of each (task, shard) is still to come
    sink.add(_batch([("z0", "b", 0, 1), ("y0", "b", 0, 2), ("z0", "a", 0, 3),
                     ("z1", "a", 1, 4), ("y1", "b", 1, 5), ("y2", "a", 1, 6),
                     ("y3", "a", 2, 7), ("y4", "b", 2, 8)]))
    assert sink.pending_shards() == set()

    def written(task, shard):
        rows = pq.read_table(tmp_path / f"out/{task}/part-{shard:05d}.parquet")
        return list(zip(rows.column("id").to_pylist(), rows.column("width").to_pylist()))

    assert written("a", 0) == [("i0", 100), ("i1", 101), ("z0", 3)]
    assert written("a", 1) == [("i2", 102), ("y2", 6), ("z1", 4)]
    assert written("a", 2) == [("j6", 106), ("j8", 108), ("y3", 7)]
    assert written("b", 0) == [("i3", 103), ("y0", 2), ("z0", 1)]
    assert written("b", 1) == [("i4", 104), ("i5", 105), ("y1", 5)]
    assert written("b", 2) == [("j7", 107), ("j9", 109), ("y4", 8)]


def test_inputs_that_never_arrived_become_the_error_rows_given_for_them(tmp_path):
    """A batch lost with its actor (crash, out of memory) leaves its inputs missing; the job
    hands the sink one error row per such input, and the shard commits with every input."""
    sink = ShardedParquetSink(tmp_path / "out", {0: 5}, ["detect"], "fp")
    sink.add(_rows(["a"], 0))
    sink.add(_rows(["v"], 0, part=0, last=False))  # a video whose later rows were lost
    sink.add(_rows(["d"], 0))
    # A video whose middle rows were lost: parts 0 and 2 (its last) arrived, 1 did not.
    sink.add(_rows(["w"], 0, part=0, last=False))
    sink.add(_rows(["w"], 0, part=2, last=True))
    missing = sink.incomplete_inputs("detect", 0, ["a", "b", "d", "v", "w"])
    # Where a row standing for the lost ones goes: after every row that arrived, on an index
    # none of them has (parts arrived would put w's at 2, beside its last frame's row).
    assert missing == {"b": 0, "v": 1, "w": 3}
    # Which rows are missing, to label them again: none of b's, v's from its second on
    # (its last never arrived), w's second.
    assert [sink.missing_parts("detect", i) for i in ("b", "v", "w")] == [
        MissingParts((), 0), MissingParts((), 1), MissingParts((1,), None)]
    assert [p in sink.missing_parts("detect", "v") for p in (0, 1, 7)] == [False, True, True]
    lost = _with_error(pa.concat_tables([_rows([id_], 0, part=missing[id_])
                                         for id_ in ("b", "v", "w")]), ["lost"] * 3)
    sink.add_lost(lost)
    assert sink.pending_shards() == set()
    table = pq.read_table(tmp_path / "out/detect/part-00000.parquet")
    assert table.column("id").to_pylist() == ["a", "b", "d", "v", "v", "w", "w", "w"]
    assert table.column("error").to_pylist() == [None, "lost", None, None, "lost",
                                                 None, None, "lost"]


def _with_error(rows: pa.Table, errors: list) -> pa.Table:
    return rows.set_column(OUTPUT_SCHEMA.get_field_index("error"), "error", pa.array(errors))


def test_retry_errors_reopens_shards_with_error_rows_and_keeps_the_other_rows(tmp_path):
    """Two tasks, three shards: shard 0 has an error in task `b` only, shard 1 none, shard 2
    a video with an error part. A rerun with retry_errors relabels exactly the inputs with an
    error row in any task, keeps every other row as written, and replaces only shards 0 and 2."""
    out = tmp_path / "out"
    tasks = ["a", "b"]
    expected = {0: 3, 1: 1, 2: 2}
    sink = ShardedParquetSink(out, expected, tasks, "fp")
    for task in tasks:
        sink.add(_rows(["x", "z"], 0, task=task))
        sink.add(_rows(["w"], 1, task=task))
        sink.add(_rows(["p"], 2, task=task))
        sink.add(_rows(["v"], 2, task=task, part=0, last=False))
    sink.add(_with_error(_rows(["v"], 2, task="a", part=1), ["stream broke at 3.0 s"]))
    sink.add(_rows(["v"], 2, task="b", part=1))
    sink.add(_with_error(_rows(["y"], 0, task="b"), ["timed out"]))
    assert sink.pending_shards() == {0}  # task a lacks y's row
    sink.add(_rows(["y"], 0, task="a"))
    sink.finish({})
    untouched = (out / "b/part-00001.parquet").stat().st_mtime_ns

    # Without the option nothing is pending; with it, shards 0 and 2 reopen.
    assert ShardedParquetSink(out, expected, tasks, "fp").pending_shards() == set()
    again = ShardedParquetSink(out, expected, tasks, "fp", retry_errors=True)
    assert again.retrying == {0: {"y"}, 2: {"v"}}
    assert again.pending_shards() == {0, 2}
    assert not (out / "_SUCCESS").exists()
    assert again.incomplete_inputs("a", 0, ["y"]) == {"y": 0}
    for task in tasks:
        again.add(_rows(["y"], 0, task=task))
        again.add(_rows(["v"], 2, task=task, part=1, last=False))
    assert again.pending_shards() == {2}
    for task in tasks:
        again.add(_rows(["v"], 2, task=task, part=0, last=False))
        again.add(_rows(["v"], 2, task=task, part=2))
    assert again.pending_shards() == set()
    again.finish({})

    for task in tasks:
        shard0 = pq.read_table(out / f"{task}/part-00000.parquet")
        assert shard0.column("id").to_pylist() == ["x", "y", "z"]
        assert shard0.column("error").to_pylist() == [None, None, None]
        shard2 = pq.read_table(out / f"{task}/part-00002.parquet")
        assert shard2.column("id").to_pylist() == ["p", "v", "v", "v"]  # the video's 3 rows
        assert shard2.column("error").to_pylist() == [None] * 4
    assert (out / "b/part-00001.parquet").stat().st_mtime_ns == untouched
    # Nothing left to retry.
    assert ShardedParquetSink(out, expected, tasks, "fp", retry_errors=True).retrying == {}


def test_a_retried_input_that_fails_again_keeps_one_error_row(tmp_path):
    out = tmp_path / "out"
    sink = ShardedParquetSink(out, {0: 2}, ["detect"], "fp")
    sink.add(pa.concat_tables([_rows(["a"], 0), _with_error(_rows(["b"], 0), ["corrupt"])]))
    again = ShardedParquetSink(out, {0: 2}, ["detect"], "fp", retry_errors=True)
    again.add(_with_error(_rows(["b"], 0), ["corrupt"]))
    table = pq.read_table(out / "detect/part-00000.parquet")
    assert table.column("id").to_pylist() == ["a", "b"]
    assert table.column("error").to_pylist() == [None, "corrupt"]


def test_retry_errors_and_overwrite_together_are_refused():
    from labeler.config import SpecError, load_job_spec

    with pytest.raises(SpecError, match="output: .*retry_errors"):
        load_job_spec(None, input="in", output="out", task="detect", family="owlv2",
                      model="m", labels=["cat"], overwrite=True, retry_errors=True)


def test_relative_uris_of_a_manifest_on_s3_resolve_as_a_local_manifests_do():
    from labeler.sources.manifest import _resolve

    manifest = "s3://b/manifests/m.jsonl"
    assert _resolve(manifest, "a.jpg") == "s3://b/manifests/a.jpg"
    assert _resolve(manifest, "../images/x.jpg") == "s3://b/images/x.jpg"
    assert _resolve(manifest, "../../../x.jpg") == "s3://b/x.jpg"  # not above the bucket
    assert _resolve(manifest, "odd//key.jpg") == "s3://b/manifests/odd//key.jpg"  # as written
    assert _resolve(manifest, "s3://other/y.jpg") == "s3://other/y.jpg"
    # Locally the file system resolves `..` (kept as written: a symlinked folder's parent).
    assert _resolve("/data/m/m.jsonl", "../images/x.jpg") == "/data/m/../images/x.jpg"


def test_a_manifest_of_web_urls_is_refused_before_any_work(tmp_path):
    from labeler.sources import plan_source
    from labeler.storage import StorageError

    (tmp_path / "m.jsonl").write_text('{"url": "a.jpg"}\n{"url": "https://example.com/b.jpg"}\n')
    with pytest.raises(StorageError, match=r"row 1 names a web URL in column 'url' "
                                           r"\(https://example.com/b.jpg\); jobs read local"):
        plan_source(str(tmp_path / "m.jsonl"), 4)


def test_links_are_followed_once_and_a_link_to_nothing_is_an_input(tmp_path):
    """A link to a folder above listed its files again and again (485 inputs of 10); a link
    to nothing had no row at all."""
    from labeler.sources import plan_source

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        (root / name).write_bytes(b"x")
    (root / "sub" / "loop").symlink_to("..")  # back to root: its files once, not again
    (root / "broken.png").symlink_to("nowhere.png")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "c.png").write_bytes(b"x")
    (root / "more").symlink_to(tmp_path / "elsewhere")  # a folder outside: followed
    plan = plan_source(str(root), files_per_shard=10)
    assert [i.id for i in plan.items] == ["a.png", "broken.png", "more/c.png", "sub/b.png"]
    assert [i.id for i in plan_source(str(root / "*.png"), files_per_shard=10).items] == [
        "a.png", "broken.png"]


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(tmp_path):
    import os

    from labeler.sources import plan_source

    os.makedirs(tmp_path / "in")
    open(os.fsencode(tmp_path / "in") + b"/caf\xe9.png", "wb").close()
    for path in (str(tmp_path / "in"), str(tmp_path / "in" / "*")):
        with pytest.raises(SpecError, match=re.escape("input.path: the file name b'")
                           + r".*caf\\xe9\.png' is not UTF-8"):
            plan_source(path, files_per_shard=10)


def test_a_webdataset_samples_second_image_is_an_input_of_its_own(tmp_path):
    """s1.left.png and s1.right.png, s2.png and s2.jpg: 3 inputs of 5 images before (the
    key's first image only, the others silently dropped)."""
    import json

    from labeler.sources import plan_source
    from labeler.storage import read_bytes

    _tar(tmp_path / "00000.tar", {"s1.left.png": b"L", "s1.right.png": b"R",
                                  "s1.json": json.dumps({"scene": 7}).encode(),
                                  "s2.png": b"P", "s2.jpg": b"J", "s3.png": b"3"})
    plan = plan_source(str(tmp_path), files_per_shard=10)
    assert [i.id for i in plan.items] == ["00000.tar/s1", "00000.tar/s1.right.png",
                                          "00000.tar/s2", "00000.tar/s2.jpg", "00000.tar/s3"]
    assert [read_bytes(i.uri) for i in plan.items] == [b"L", b"R", b"P", b"J", b"3"]
    assert plan.metadata.column("scene").to_pylist() == [7, 7, None, None, None]
