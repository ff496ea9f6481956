"""Manifests that hold the image bytes: Parquet (img2dataset's `jpg`, HF datasets' `image`
struct) and JSONL (`image_base64`), planned as cell URIs and read back one cell at a time."""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler import storage
from labeler.sources import plan_source
from labeler.storage import read_bytes
from labeler.testing.samples import jpeg_bytes, synthetic_image

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _read(uri: str):
    """The bytes, or the error message read_bytes gives."""
    try:
        return read_bytes(uri)
    except OSError as err:
        return f"error: {err}"


def test_img2dataset_parquet_reads_each_cell_and_carries_the_other_columns(tmp_path):
    images = [jpeg_bytes(synthetic_image(40 + i, 30, seed=i)) for i in range(5)]
    cells = [images[0], None, b"", images[3], images[4]]
    table = pa.table({"key": ["000", "001", "002", "003", "004"],
                      "url": [f"http://example.com/{i}.jpg" for i in range(5)],
                      "caption": [f"caption {i}" for i in range(5)],
                      "status": ["success", "failed_to_download", "success", "success", "success"],
                      "jpg": pa.array(cells, pa.binary())})
    pq.write_table(table, tmp_path / "00000.parquet", row_group_size=2)

    plan = plan_source(str(tmp_path / "00000.parquet"), files_per_shard=4)
    manifest = str(tmp_path / "00000.parquet")
    assert [i.id for i in plan.items] == ["000", "001", "002", "003", "004"]
    assert [i.uri for i in plan.items] == [f"{manifest}#row={n}&column=jpg" for n in range(5)]
    assert [i.shard for i in plan.items] == [0, 0, 0, 0, 1]
    # The url is where img2dataset downloaded from: carried through, not read.
    assert plan.metadata.column_names == ["id", "url", "caption", "status"]
    assert plan.metadata.column("caption").to_pylist() == [f"caption {i}" for i in range(5)]
    assert [_read(i.uri) for i in plan.items] == [
        images[0], "error: row 1 of the manifest has no image bytes (jpg is null)",
        "error: row 2 of the manifest has no image bytes (jpg is empty)", images[3], images[4]]


def test_rows_without_ids_are_named_by_their_manifests_path_under_the_root(tmp_path):
    """One file name in two split folders (train/0000.parquet, test/0000.parquet)."""
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        pq.write_table(pa.table({"image": [f"{split}-0".encode(), f"{split}-1".encode()]}),
                       tmp_path / split / "0000.parquet")
    plan = plan_source(str(tmp_path), files_per_shard=10)
    assert [i.id for i in plan.items] == ["test/0000.parquet/0", "test/0000.parquet/1",
                                          "train/0000.parquet/0", "train/0000.parquet/1"]
    assert [_read(i.uri) for i in plan.items] == [b"test-0", b"test-1", b"train-0", b"train-1"]
    one = plan_source(str(tmp_path / "train" / "0000.parquet"), files_per_shard=10)
    assert [i.id for i in one.items] == ["0000.parquet/0", "0000.parquet/1"]


def test_hf_datasets_image_struct_and_ids_from_the_row_number(tmp_path):
    table = pa.table({"image": pa.array([{"bytes": b"img-0", "path": "a.jpg"}, None,
                                         {"bytes": None, "path": "c.jpg"},
                                         {"bytes": b"img-3", "path": None}], HF_IMAGE),
                      "label": [3, 1, 4, 1], "prompt": ["a cat", None, "", "a dog"]})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    plan = plan_source(str(tmp_path), files_per_shard=10)
    assert [i.id for i in plan.items] == [f"train-00000-of-00001.parquet/{n}" for n in range(4)]
    assert [i.prompt for i in plan.items] == ["a cat", None, None, "a dog"]
    assert plan.metadata.column_names == ["id", "label"]
    assert [_read(i.uri) for i in plan.items] == [
        b"img-0", "error: row 1 of the manifest has no image bytes (image is null)",
        "error: row 2 of the manifest has no image bytes (image is null)", b"img-3"]


@pytest.mark.parametrize("column", ["image", "png", "bytes"])
def test_a_manifest_of_only_images_in_any_bytes_column(tmp_path, column):
    pq.write_table(pa.table({column: pa.array([b"p0", b"p1"], pa.large_binary())}),
                   tmp_path / "m.parquet")
    plan = plan_source(str(tmp_path / "m.parquet"), files_per_shard=10)
    assert [(i.id, read_bytes(i.uri)) for i in plan.items] == [("m.parquet/0", b"p0"),
                                                               ("m.parquet/1", b"p1")]
    assert plan.metadata is None


def test_parquet_reads_only_the_image_column_of_one_row_group_and_caches_two(tmp_path,
                                                                             monkeypatch):
    rows = 40
    pq.write_table(pa.table({"id": [f"r{n}" for n in range(rows)],
                             "jpg": [f"image {n}".encode() for n in range(rows)],
                             "note": ["x" * 100] * rows}),
                   tmp_path / "m.parquet", row_group_size=10)
    plan = plan_source(str(tmp_path / "m.parquet"), files_per_shard=16)
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, columns=None, **kw: (reads.append((i, columns)),
                                                             real(self, i, columns=columns, **kw))[1])
    monkeypatch.setattr(storage, "_parquet_cache", type(storage._parquet_cache)())

    # Two decode tasks of 16 consecutive rows: rows 0-15 and 16-31 span groups 0..3.
    for item in plan.items[:32]:
        assert read_bytes(item.uri) == f"image {item.id[1:]}".encode()
    assert reads == [(0, ["jpg"]), (1, ["jpg"]), (2, ["jpg"]), (3, ["jpg"])]
    read_bytes(plan.items[25].uri)  # group 2 is still cached (the last two: 2 and 3)
    read_bytes(plan.items[5].uri)  # group 0 was evicted
    assert reads[4:] == [(0, ["jpg"])] and len(storage._parquet_cache) == 2

    # The manifest rewritten: the cache does not answer for the old file.
    pq.write_table(pa.table({"id": ["r0"], "jpg": [b"new image, longer than before"]}),
                   tmp_path / "m.parquet")
    assert read_bytes(plan.items[0].uri) == b"new image, longer than before"
    assert _read(plan.items[30].uri) == "error: the manifest has no row 30 (it has 1 rows)"


def test_jsonl_base64_lines_are_read_by_byte_range(tmp_path):
    images = [jpeg_bytes(synthetic_image(32, 24 + i, seed=i)) for i in range(3)]
    lines = [{"id": "a", "image_base64": base64.b64encode(images[0]).decode(), "source": "cam-1",
              "prompt": "a red car"},
             {"id": "b", "source": "cam-2", "note": "caf\u00e9 \u2028 line separator",
              "image_base64": "data:image/jpeg;base64," + base64.b64encode(images[1]).decode()},
             {"id": "c", "image_base64": None, "source": "cam-3"},
             {"id": "d", "image_base64": "not base64 !", "source": "cam-4"},
             {"id": "e", "image_base64": base64.b64encode(images[2]).decode(), "source": "cam-5"}]
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines[:3]) + "\r\n\n"
    text += "\n".join(json.dumps(line) for line in lines[3:])  # no final newline
    (tmp_path / "m.jsonl").write_text(text, encoding="utf-8")

    plan = plan_source(str(tmp_path / "m.jsonl"), files_per_shard=10)
    assert [i.id for i in plan.items] == ["a", "b", "c", "d", "e"]
    assert [i.prompt for i in plan.items] == ["a red car", None, None, None, None]
    assert plan.metadata.column("source").to_pylist() == [f"cam-{n}" for n in range(1, 6)]
    assert "image_base64" not in plan.metadata.column_names
    assert plan.metadata.column("note").to_pylist()[1] == "caf\u00e9 \u2028 line separator"
    raw = text.encode()
    for item in plan.items:  # each URI names the byte range of its own line
        offset, size = (int(x.split("=")[1]) for x in item.uri.split("&")[1:3])
        assert json.loads(raw[offset:offset + size])["id"] == item.id
    assert [_read(i.uri) for i in plan.items] == [
        images[0], images[1], "error: row 2 of the manifest has no image bytes (image_base64 is null)",
        "error: row 3 of the manifest: image_base64 is not valid base64 (Only base64 data is allowed)",
        images[2]]


def test_a_manifest_without_images_or_uris_names_both_options(tmp_path):
    from labeler.storage import StorageError

    pq.write_table(pa.table({"name": ["a.jpg"], "jpg": ["not binary"]}), tmp_path / "m.parquet")
    with pytest.raises(StorageError, match=r"no URI column \(one of uri, .*\) and no image bytes "
                                           r"\(Parquet: one of image, .*; JSONL: image_base64\)"):
        plan_source(str(tmp_path / "m.parquet"), 4)


def test_a_manifest_nested_past_the_parsers_depth_is_a_storage_error(tmp_path):
    from labeler.sources.manifest import manifest_samples
    from labeler.sources.webdataset import _metadata
    from labeler.storage import StorageError

    deep = b"[" * 100_000 + b"]" * 100_000
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"path": "a.jpg", "deep": ' + deep + b"}\n")
    with pytest.raises(StorageError, match="parse line 1 of the manifest"):
        manifest_samples(str(manifest))
    assert _metadata(deep, "json", "s.tar", "k.json") == {}  # skipped, as invalid JSON is
