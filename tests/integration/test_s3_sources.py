"""Sources on the real S3 server (SeaweedFS on 127.0.0.1): manifests holding the image bytes
and a tar whose stream breaks, planned and read back cell by cell as decode tasks do."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.sources import plan_source
from labeler.storage import read_bytes


def _read(uri: str):
    try:
        return read_bytes(uri)
    except OSError as err:
        return f"error: {err}"


def test_bytes_manifests_and_a_broken_tar_in_s3(s3_bucket, s3_env):
    client = s3_env.client()
    images = [f"image {n}".encode() for n in range(5)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": [f"k{n}" for n in range(5)], "caption": list("abcde"),
                             "jpg": pa.array(images[:3] + [None] + images[4:], pa.binary())}),
                   buf, row_group_size=2)
    client.put_object(Bucket=s3_bucket, Key="pq/00000.parquet", Body=buf.getvalue())
    lines = [{"id": "j0", "image_base64": base64.b64encode(images[0]).decode()},
             {"id": "j1", "image_base64": base64.b64encode(images[1]).decode(), "x": 1}]
    client.put_object(Bucket=s3_bucket, Key="jsonl/m.jsonl",
                      Body="\n".join(json.dumps(line) for line in lines).encode())

    plan = plan_source(f"s3://{s3_bucket}/pq", files_per_shard=8)
    assert [i.uri for i in plan.items][:2] == [f"s3://{s3_bucket}/pq/00000.parquet#row=0&column=jpg",
                                               f"s3://{s3_bucket}/pq/00000.parquet#row=1&column=jpg"]
    assert [(i.id, _read(i.uri)) for i in plan.items] == [
        ("k0", images[0]), ("k1", images[1]), ("k2", images[2]),
        ("k3", "error: row 3 of the manifest has no image bytes (jpg is null)"), ("k4", images[4])]
    assert plan.metadata.column("caption").to_pylist() == list("abcde")

    plan = plan_source(f"s3://{s3_bucket}/jsonl/m.jsonl", files_per_shard=8)
    assert [(i.id, read_bytes(i.uri)) for i in plan.items] == [("j0", images[0]), ("j1", images[1])]

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as out:
        for name, data in {"a.jpg": b"A" * 600, "b.jpg": b"B" * 10, "c.jpg": b"C" * 10}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    data = tar.getvalue()
    cut = data.index(b"b.jpg")
    client.put_object(Bucket=s3_bucket, Key="wds/00000.tar",
                      Body=data[:cut] + b"\x00corrupt" + data[cut + 8:])
    plan = plan_source(f"s3://{s3_bucket}/wds", files_per_shard=8)
    assert [(i.id, _read(i.uri)) for i in plan.items] == [
        ("00000.tar/a", b"A" * 600),
        ("00000.tar/<unreadable from byte 1536>",
         f"error: the tar s3://{s3_bucket}/wds/00000.tar is unreadable from byte 1536 on (a member "
         f"header is corrupt): the samples stored after that point are lost")]


def test_hidden_objects_under_a_prefix_are_not_inputs(s3_bucket, s3_env):
    """As under a local folder: `._a.jpg` (macOS) and a `.cache/` prefix are not inputs."""
    client = s3_env.client()
    for key in ("hidden/a.jpg", "hidden/._a.jpg", "hidden/.cache/b.jpg", "hidden/sub/c.jpg"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    plan = plan_source(f"s3://{s3_bucket}/hidden", files_per_shard=8)
    assert [i.id for i in plan.items] == ["a.jpg", "sub/c.jpg"]
