"""Jobs against a real S3 server (SeaweedFS on 127.0.0.1): inputs, outputs, manifests,
WebDataset shards and models under s3://, and the failures that must stop a job early."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from labeler.config import load_job_spec
from labeler.jobs.images import run_image_job
from labeler.jobs.runner import run_job
from labeler.storage import StorageError, filesystem_for, resolve_model_source
from labeler.testing.samples import jpeg_bytes, make_sample_images, synthetic_image

LABELS = ["a photo of a cat", "a dog"]


def _upload_folder(client, bucket: str, folder: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        keys.append(key)
    return keys


def _read_output(uri: str):
    fs, path = filesystem_for(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table()


def _spec(input_uri, output, model, **kw):
    kw.setdefault("labels", LABELS)
    kw.setdefault("task", "detect")
    return load_job_spec(None, input=input_uri, output=output, family="owlv2", model=model,
                         threshold=0.3, batch_size=4, **kw)


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("s3-images")
    make_sample_images(folder, count=5, bad=True)
    return folder


def test_job_reads_images_and_model_from_s3_and_writes_to_s3(ray_local, s3_bucket, s3_env,
                                                            sample_folder, tiny_owlv2,
                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_CACHE", str(tmp_path / "cache"))  # the actors' model copy
    client = s3_env.client()
    _upload_folder(client, s3_bucket, sample_folder, "images")
    _upload_folder(client, s3_bucket, Path(tiny_owlv2), "models/owlv2")
    client.put_object(Bucket=s3_bucket, Key="images/readme.txt", Body=b"not an image")

    spec = _spec(f"s3://{s3_bucket}/images", f"s3://{s3_bucket}/out",
                 f"s3://{s3_bucket}/models/owlv2")
    spec = spec.model_copy(update={"input": spec.input.model_copy(update={"files_per_shard": 3})})
    summary = run_image_job(spec, progress=False)
    assert (summary.rows, summary.errors, summary.output) == (8, 3, f"s3://{s3_bucket}/out")

    rows = {r["id"]: r for r in _read_output(f"s3://{s3_bucket}/out").to_pylist()}
    assert set(rows) == {p.name for p in sample_folder.iterdir()}
    assert rows["bad_empty.png"]["error"] == "empty file (0 bytes)"
    assert rows["sample_000.jpg"]["uri"] == f"s3://{s3_bucket}/images/sample_000.jpg"
    assert (rows["sample_000.jpg"]["width"], rows["sample_000.jpg"]["height"]) == (480, 640)
    assert rows["sample_001.png"]["model"] == f"s3://{s3_bucket}/models/owlv2"
    assert all(r["detections"] for r in rows.values() if r["error"] is None)

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"])
    assert keys == ["out/_SUCCESS", "out/_job.json",
                    *(f"out/detect/part-{i:05d}.parquet" for i in range(3))]

    # The same labels as the same job from local disk with the local model.
    local = run_image_job(_spec(str(sample_folder), str(tmp_path / "local"), tiny_owlv2),
                          progress=False)
    assert local.rows == 8
    by_id = {r["id"]: r for r in _read_output(str(tmp_path / "local")).to_pylist()}
    for name, row in rows.items():
        assert row["detections"] == by_id[name]["detections"], name

    # Rerun: every shard is committed in S3, nothing is labeled again.
    again = run_image_job(spec, progress=False)
    assert (again.rows, again.skipped_inputs) == (0, 8)
    assert _read_output(f"s3://{s3_bucket}/out").num_rows == 8

    # The empty object is replaced by an image: --retry-errors rewrites the shards holding
    # the three error rows in S3, and labels the mended one.
    client.put_object(Bucket=s3_bucket, Key="images/bad_empty.png",
                      Body=jpeg_bytes(synthetic_image(200, 100, seed=3)))
    retry_spec = spec.model_copy(update={"output": spec.output.model_copy(
        update={"retry_errors": True})})
    retried = run_image_job(retry_spec, progress=False)
    assert (retried.rows, retried.errors, retried.retried_inputs) == (3, 2, 3)
    rows = {r["id"]: r for r in _read_output(f"s3://{s3_bucket}/out").to_pylist()}
    assert len(rows) == 8 and rows["bad_empty.png"]["error"] is None
    assert (rows["bad_empty.png"]["width"], rows["bad_empty.png"]["height"]) == (200, 100)


def test_manifest_rows_missing_objects_and_prompts(ray_local, s3_bucket, s3_env, tiny_owlv2,
                                                   tmp_path):
    """A JSONL manifest in S3: other columns come through, a `prompt` column is each row's
    query, a missing object and a row without a URI are error rows."""
    client = s3_env.client()
    for i in range(3):
        client.put_object(Bucket=s3_bucket, Key=f"img/{i}.jpg",
                          Body=jpeg_bytes(synthetic_image(120 + 10 * i, 90, seed=i)))
    lines = [
        {"uri": f"s3://{s3_bucket}/img/0.jpg", "id": "a", "source": "cam-1", "prompt": "a red car"},
        {"uri": "img/1.jpg", "id": "b", "source": "cam-2", "prompt": ""},  # relative to manifest
        {"uri": f"s3://{s3_bucket}/img/2.jpg", "id": "c", "source": "cam-3", "prompt": "a cat, a dog"},
        {"uri": f"s3://{s3_bucket}/img/gone.jpg", "id": "d", "source": "cam-4"},
        {"id": "e", "source": "cam-5"},
    ]
    client.put_object(Bucket=s3_bucket, Key="manifest.jsonl",
                      Body="\n".join(json.dumps(x) for x in lines).encode())
    spec = _spec(f"s3://{s3_bucket}/manifest.jsonl", str(tmp_path / "out"), tiny_owlv2,
                 task="ground", labels=["a tree"])
    summary = run_image_job(spec, progress=False)
    assert (summary.rows, summary.errors) == (5, 2)

    rows = {r["id"]: r for r in _read_output(str(tmp_path / "out")).to_pylist()}
    assert {k: r["source"] for k, r in rows.items()} == {
        "a": "cam-1", "b": "cam-2", "c": "cam-3", "d": "cam-4", "e": "cam-5"}
    assert rows["a"]["prompt"] == "a red car"
    assert rows["b"]["prompt"] == "a tree"  # an empty prompt: the task's queries
    assert rows["c"]["prompt"] == "a cat, a dog"
    assert {d["label"] for d in rows["c"]["detections"]} <= {"a cat", "a dog"}
    assert rows["b"]["uri"] == f"s3://{s3_bucket}/img/1.jpg"
    assert rows["d"]["error"].startswith("cannot read input: Path does not exist")
    assert rows["e"]["error"] == "cannot read input: row 4 of the manifest has no uri"
    assert all(rows[k]["error"] is None and rows[k]["width"] for k in "abc")


def test_webdataset_shards_in_s3(ray_local, s3_bucket, s3_env, tiny_owlv2, tmp_path):
    """img2dataset-style tars: key.jpg + key.json + key.txt; a truncated member is an error
    row, the other samples are labeled, metadata and captions come through."""
    client = s3_env.client()
    for shard in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for k in range(3):
                key = f"{shard:05d}{k:04d}"
                members = {f"{key}.jpg": jpeg_bytes(synthetic_image(100 + k * 7, 80, seed=k)),
                           f"{key}.json": json.dumps({"key": key, "width": 999, "url": f"http://x/{k}"}).encode(),
                           f"{key}.txt": f"caption {key}".encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        data = buf.getvalue()
        if shard == 1:  # cut inside the last image: what an interrupted upload leaves
            last = data.rindex(b"\xff\xd9")
            data = data[: last - 100]
        client.put_object(Bucket=s3_bucket, Key=f"wds/{shard:05d}.tar", Body=data)

    summary = run_image_job(_spec(f"s3://{s3_bucket}/wds", str(tmp_path / "out"), tiny_owlv2),
                            progress=False)
    rows = {r["id"]: r for r in _read_output(str(tmp_path / "out")).to_pylist()}
    assert sorted(rows) == [f"{s:05d}.tar/{s:05d}{k:04d}" for s in range(2) for k in range(3)]
    assert (summary.rows, summary.errors) == (6, 1)
    broken = rows["00001.tar/000010002"]
    assert "truncated" in broken["error"]
    good = rows["00000.tar/000000001"]
    assert good["error"] is None and (good["width"], good["height"]) == (107, 80)
    assert good["caption"] == "caption 000000001" and good["url"] == "http://x/1"
    assert good["input_width"] == 999  # a metadata field named like a record field


@pytest.mark.parametrize("case", ["no such bucket", "wrong secret", "endpoint down"])
def test_unusable_input_fails_before_any_work(s3_env, s3_bucket, case, tiny_owlv2, tmp_path,
                                              monkeypatch):
    uri, secret = f"s3://{s3_bucket}/images", s3_env.env()["AWS_SECRET_ACCESS_KEY"]
    s3_env.client().put_object(Bucket=s3_bucket, Key="images/a.jpg",
                               Body=jpeg_bytes(synthetic_image(64, 64, seed=0)))
    if case == "no such bucket":
        uri, cause = "s3://no-such-bucket-here/images", "bucket does not exist"
    elif case == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + secret)
        cause = "signature"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
        cause = "Could not connect"
    with pytest.raises(StorageError) as err:
        run_image_job(_spec(uri, str(tmp_path / "out"), tiny_owlv2), progress=False)
    message = str(err.value)
    assert message.startswith(f"cannot list {uri}: ") and cause.lower() in message.lower()
    assert secret not in message and "wrong-" not in message
    assert not (tmp_path / "out").exists()


def test_output_to_a_missing_bucket_fails_before_any_work(s3_env, s3_bucket, sample_folder,
                                                          tiny_owlv2):
    spec = _spec(str(sample_folder), "s3://no-such-out/x", tiny_owlv2)
    with pytest.raises(StorageError, match="cannot write the output to s3://no-such-out/x: .*"
                                           "bucket does not exist"):
        run_image_job(spec, progress=False)
    # A dry run finds it too, though it writes nothing.
    with pytest.raises(StorageError, match="cannot write the output to s3://no-such-out/x: "
                                           "bucket does not exist: 'no-such-out'"):
        run_job(spec, progress=False, dry_run=True)
    assert run_job(_spec(str(sample_folder), f"s3://{s3_bucket}/x", tiny_owlv2),
                   progress=False, dry_run=True).dry_run  # an existing one passes


def test_model_from_s3_is_downloaded_once_for_concurrent_callers(s3_env, s3_bucket, tiny_owlv2,
                                                                 tmp_path, monkeypatch):
    from transformers import AutoConfig

    keys = _upload_folder(s3_env.client(), s3_bucket, Path(tiny_owlv2), "m/owlv2")
    copies = []
    real_copy = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda *a, **k: (copies.append(a), real_copy(*a, **k)))
    results, errors = [], []

    def resolve():
        try:
            results.append(resolve_model_source(f"s3://{s3_bucket}/m/owlv2/", tmp_path / "cache"))
        except Exception as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=resolve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(copies) == 1 and len(set(results)) == 1
    local = Path(results[0])
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == \
        sorted(k.removeprefix("m/owlv2/") for k in keys)
    for path in Path(tiny_owlv2).iterdir():
        assert (local / path.name).read_bytes() == path.read_bytes()
    assert AutoConfig.from_pretrained(local).model_type == "owlv2"
    assert resolve_model_source(f"s3://{s3_bucket}/m/owlv2", tmp_path / "cache") == str(local)
    assert len(copies) == 1  # cached: no second download
    # Uploaded again under the same prefix (a retrained model): copied again, not the
    # node's old copy for ever; the old copy is deleted.
    config = json.loads((Path(tiny_owlv2) / "config.json").read_text())
    config["labeler_note"] = "retrained"
    s3_env.client().put_object(Bucket=s3_bucket, Key="m/owlv2/config.json",
                               Body=json.dumps(config).encode())
    again = Path(resolve_model_source(f"s3://{s3_bucket}/m/owlv2", tmp_path / "cache"))
    assert again != local and len(copies) == 2 and not local.exists()
    assert json.loads((again / "config.json").read_text())["labeler_note"] == "retrained"
