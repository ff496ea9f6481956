"""A whole image job on a real local Ray, read back with pyarrow."""

import json
import subprocess
import sys

import pyarrow.dataset as pads
import pytest

from labeler.config import load_job_spec
from labeler.jobs.images import run_image_job
from labeler.testing.samples import make_sample_images

LABELS = ["a photo of a cat", "a dog"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    make_sample_images(folder, count=10, bad=True)
    return folder


def _spec(folder, out, model, **kw):
    return load_job_spec(None, input=str(folder), output=str(out), task="detect",
                         family="owlv2", model=model, labels=LABELS, threshold=0.3,
                         batch_size=4, **kw)


def test_job_writes_one_row_per_input_with_error_rows(ray_local, image_folder, tiny_owlv2,
                                                      tmp_path):
    spec = _spec(image_folder, tmp_path / "out", tiny_owlv2).model_copy(
        update={"input": _spec(image_folder, tmp_path / "out", tiny_owlv2).input.model_copy(
            update={"files_per_shard": 4})})
    summary = run_image_job(spec, progress=False)
    assert (summary.rows, summary.errors) == (13, 3)

    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert table.num_rows == 13
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == {p.name for p in image_folder.iterdir()}
    assert rows["bad_empty.png"]["error"] == "empty file (0 bytes)"
    assert rows["bad_not_an_image.png"]["error"] == "not a recognised image format"
    assert rows["bad_truncated.jpg"]["error"].startswith("corrupt image data")
    for bad in ("bad_empty.png", "bad_not_an_image.png", "bad_truncated.jpg"):
        assert rows[bad]["detections"] is None and rows[bad]["width"] is None

    good = [r for r in rows.values() if r["error"] is None]
    # A good row holds a list of boxes, empty when the random model's boxes all lie in the
    # padding below or beside the image (dropped); most rows have some.
    assert len(good) == 10 and all(r["detections"] is not None for r in good)
    assert sum(bool(r["detections"]) for r in good) >= 8
    assert (rows["sample_000.jpg"]["width"], rows["sample_000.jpg"]["height"]) == (480, 640)
    assert (rows["sample_001.png"]["width"], rows["sample_001.png"]["height"]) == (480, 640)
    for r in good:
        assert r["task"] == "detect" and r["model_family"] == "owlv2"
        assert json.loads(r["parameters"])["labels"] == LABELS
        assert r["timings"]["predict_ms"] > 0
        for d in r["detections"]:
            assert d["label"] in LABELS and 0.3 < d["score"] <= 1
            assert 0 <= d["x0"] <= d["x1"] <= r["width"] and 0 <= d["y0"] <= d["y1"] <= r["height"]

    # 13 inputs, 4 per shard: files named by shard, nothing else readable.
    names = sorted(p.name for p in (tmp_path / "out" / "detect").iterdir())
    assert names == [f"part-{i:05d}.parquet" for i in range(4)]

    # Same job again: everything is committed, nothing is recomputed.
    again = run_image_job(spec, progress=False)
    assert (again.rows, again.skipped_inputs) == (0, 13)
    assert pads.dataset(tmp_path / "out", format="parquet").count_rows() == 13


def test_job_matches_the_adapter_called_directly(ray_local, image_folder, tiny_owlv2, tmp_path):
    """The batch path through Ray gives the same detections as the adapter in-process."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from labeler.models.base import ImageInput
    from labeler.models.owlv2 import Owlv2Detector

    spec = _spec(image_folder, tmp_path / "out", tiny_owlv2)
    run_image_job(spec, progress=False)
    rows = {r["id"]: r for r in pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()}
    adapter = Owlv2Detector(spec.tasks[0])
    adapter.setup(torch.device("cpu"))
    for name in ("sample_001.png", "sample_003.bmp"):
        img = np.asarray(ImageOps.exif_transpose(Image.open(image_folder / name)).convert("RGB"))
        (direct,) = adapter([ImageInput(img, img.shape[1], img.shape[0])])
        got = rows[name]["detections"]
        assert [d["label"] for d in got] == [d["label"] for d in direct["detections"]]
        for a, b in zip(got, direct["detections"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert a["x0"] == pytest.approx(b["x0"], abs=1e-3)


def test_heic_and_avif_inputs_are_labeled_as_shown(ray_local, tiny_owlv2, tmp_path):
    """Phone photos (HEIC) and AVIF, each rotated by its metadata: listed, decoded on the
    Ray workers (pillow-heif registered there too), labeled at the oriented size, the same
    detections as the adapter given the decoded pixels in-process."""
    import numpy as np
    import torch
    from PIL import Image

    from labeler.media.image import decode_image
    from labeler.models.base import ImageInput
    from labeler.models.owlv2 import Owlv2Detector
    from labeler.testing.samples import synthetic_image

    folder = tmp_path / "phone"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 64 wide, 48 high as stored
    for name, fmt in (("IMG_0001.HEIC", "HEIF"), ("web.avif", "AVIF")):
        synthetic_image(64, 48, seed=3).save(folder / name, fmt, quality=90, exif=exif.tobytes())
    spec = _spec(folder, tmp_path / "out", tiny_owlv2)
    summary = run_image_job(spec, progress=False)
    assert (summary.rows, summary.errors) == (2, 0)
    rows = {r["id"]: r for r in pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()}
    adapter = Owlv2Detector(spec.tasks[0])
    adapter.setup(torch.device("cpu"))
    for name in ("IMG_0001.HEIC", "web.avif"):
        assert (rows[name]["width"], rows[name]["height"]) == (48, 64)
        decoded = decode_image((folder / name).read_bytes(), 10**6)
        (direct,) = adapter([ImageInput(np.asarray(decoded.pixels), 48, 64)])
        got = rows[name]["detections"]
        assert got and len(got) == len(direct["detections"])
        for a, b in zip(got, direct["detections"]):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_a_tiled_job_equals_the_tiled_adapter_on_pixels_decoded_for_its_tiles(
        ray_local, tiny_owlv2, tmp_path):
    """--tiles through Ray: the CPU stage cuts and prepares each window, the actor labels
    and merges them; rows equal the tiled adapter in-process. A large JPEG is decoded at
    the reduced size that keeps each tile decode_min_side wide (1/4 here, not the 1/8 the
    whole image alone would get)."""
    import numpy as np
    import torch

    from labeler.config import decode_side_for_tasks
    from labeler.media.image import decode_image
    from labeler.models.base import ImageInput
    from labeler.models.owlv2 import Owlv2Detector
    from labeler.testing.samples import synthetic_image

    folder = tmp_path / "large"
    folder.mkdir()
    synthetic_image(2400, 1600, seed=5).save(folder / "aerial.jpg", quality=90)
    synthetic_image(300, 211, seed=6).save(folder / "small.png")
    spec = _spec(folder, tmp_path / "out", tiny_owlv2, tiles=[2, 2], tile_overlap=0.25,
                 preprocess="fast")
    spec = spec.model_copy(update={"input": spec.input.model_copy(
        update={"decode_min_side": 300})})
    side = decode_side_for_tasks(300, spec.tasks)
    assert side == 525  # 300 x (2 - 0.25)
    summary = run_image_job(spec, progress=False)
    assert (summary.rows, summary.errors) == (2, 0)
    rows = {r["id"]: r for r in pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()}
    assert json.loads(rows["small.png"]["parameters"])["tiles"]["grid"] == [2, 2]
    adapter = Owlv2Detector(spec.tasks[0])
    adapter.setup(torch.device("cpu"))
    for name, decoded_width in (("aerial.jpg", 600), ("small.png", 300)):
        decoded = decode_image((folder / name).read_bytes(), 10**8, side)
        assert decoded.pixels.shape[1] == decoded_width
        (direct,) = adapter([ImageInput(np.asarray(decoded.pixels), decoded.width,
                                        decoded.height)])
        got = rows[name]["detections"]
        assert (rows[name]["width"], rows[name]["height"]) == (decoded.width, decoded.height)
        assert got and len(got) == len(direct["detections"])
        for a, b in zip(got, direct["detections"]):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert a["y1"] == pytest.approx(b["y1"], abs=1e-3)


def test_cli_rejects_a_bad_spec_before_starting_ray(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "labeler.cli", "run", "--input", str(tmp_path / "missing"),
         "--output", str(tmp_path / "out"), "--task", "detect", "--family", "owlv3",
         "--model", "x", "--labels", "cat"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "input.path: input path" in result.stderr and "does not exist" in result.stderr
    assert "tasks.0.model.family: unknown model family 'owlv3'" in result.stderr
    assert "valid families: owlv2, florence2, blip2, qwen2_vl, ovis2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_several_tasks_share_one_read(ray_local, image_folder, tiny_owlv2, tmp_path):
    """Two tasks in one job: one row per input and task, each task in its own folder,
    decode errors repeated for each task."""
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(f"""
input: {{path: {image_folder}}}
output: {{path: {tmp_path / "out"}}}
tasks:
  - name: animals
    task: detect
    model: {{family: owlv2, source: {tiny_owlv2}}}
    labels: [a photo of a cat, a dog]
    threshold: 0.3
    resources: {{batch_size: 4, num_cpus: 0.5}}
  - name: vehicles
    task: detect
    model: {{family: owlv2, source: {tiny_owlv2}}}
    labels: [car, bus]
    threshold: 0.5
    preprocess: fast
    resources: {{batch_size: 3, num_cpus: 0.5}}
""")
    summary = run_image_job(load_job_spec(spec_file), progress=False)
    assert (summary.rows, summary.errors) == (26, 6)
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    by_task = {}
    for row in table.to_pylist():
        by_task.setdefault(row["task_name"], {})[row["id"]] = row
    assert set(by_task) == {"animals", "vehicles"}
    assert all(len(rows) == 13 for rows in by_task.values())
    assert {d["label"] for r in by_task["vehicles"].values() for d in (r["detections"] or [])} <= {"car", "bus"}
    assert by_task["vehicles"]["bad_empty.png"]["error"] == "empty file (0 bytes)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("_")) == [
        "animals", "vehicles"]

    # The one-task job with the same parameters gives the same rows as the shared read.
    alone = _spec(image_folder, tmp_path / "alone", tiny_owlv2)
    run_image_job(alone, progress=False)
    single = {r["id"]: r for r in pads.dataset(tmp_path / "alone", format="parquet").to_table().to_pylist()}
    for name, row in by_task["animals"].items():
        assert row["detections"] == single[name]["detections"]


def test_actors_that_leave_no_cpu_for_decoding_are_refused(ray_local, image_folder, tiny_owlv2,
                                                           tmp_path):
    from labeler.config import SpecError

    spec = _spec(image_folder, tmp_path / "out", tiny_owlv2, concurrency=2)
    with pytest.raises(SpecError, match="reserve 2 CPUs and decoding needs 1, but this Ray has 2"):
        run_image_job(spec, progress=False)
    assert not (tmp_path / "out").exists()  # refused before any output was made


def test_actors_asking_for_more_gpus_than_the_machine_has_are_refused(ray_local, image_folder,
                                                                     tiny_owlv2, tmp_path):
    """Ray would wait forever for a GPU node a local Ray never gets."""
    import ray

    from labeler.config import SpecError
    from labeler.jobs.runner import check_local_gpus

    gpus = int(ray.cluster_resources().get("GPU", 0))
    spec = _spec(image_folder, tmp_path / "out", tiny_owlv2, num_gpus=gpus + 1)
    with pytest.raises(SpecError, match=rf"tasks\.0\.resources\.num_gpus: 1 model actor\(s\) "
                                        rf"of {gpus + 1} GPU each, but this machine's Ray has"):
        run_image_job(spec, progress=False)
    two = _spec(image_folder, tmp_path / "out", tiny_owlv2, num_gpus=0.75, actor_cpus=0.5)
    two = two.model_copy(update={"tasks": [two.tasks[0], two.tasks[0].model_copy(
        update={"name": "again"})]})
    assert not (tmp_path / "out").exists()  # refused before any output was made
    # Each fits a GPU alone; together they need two (the check of a machine with one GPU).
    with pytest.raises(SpecError, match=r"tasks\.\*\.resources\.num_gpus: the tasks' model "
                                        r"actors need 1\.5 GPUs together, but this machine's "
                                        r"Ray has 1"):
        check_local_gpus(two, 1)
    check_local_gpus(two, 2)


def test_a_pool_that_may_grow_labels_every_input(ray_local, image_folder, tiny_owlv2, tmp_path):
    """concurrency [min, max]: Ray Data's autoscaling actor pool, the same rows."""
    spec = _spec(image_folder, tmp_path / "out", tiny_owlv2, concurrency=[1, 2])
    task = spec.tasks[0]
    spec = spec.model_copy(update={"tasks": [task.model_copy(update={
        "resources": task.resources.model_copy(update={"num_cpus": 0.5})})]})
    summary = run_image_job(spec, progress=False)
    assert (summary.rows, summary.errors) == (13, 3)
    table = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == sorted(p.name for p in image_folder.iterdir())
    from labeler.config import SpecError

    refused = _spec(image_folder, tmp_path / "out2", tiny_owlv2, concurrency=[1, 2])
    with pytest.raises(SpecError, match="reserve 2 CPUs"):  # counted at its largest
        run_image_job(refused, progress=False)


def test_a_captioner_and_a_detector_share_one_read(ray_local, image_folder, tiny_owlv2,
                                                   tiny_model, tmp_path):
    """A generative task reads the decoded images, OWLv2 its own preprocessed column; the
    caption rows equal the adapter run in-process on the same images."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    from labeler.models.base import ImageInput
    from labeler.registry import load_adapter_class

    blip2 = tiny_model("blip2")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(f"""
input: {{path: {image_folder}}}
output: {{path: {tmp_path / "out"}}}
tasks:
  - task: caption
    model: {{family: blip2, source: {blip2}}}
    generation: {{max_new_tokens: 8}}
    resources: {{batch_size: 4, num_cpus: 0.5}}
  - task: detect
    model: {{family: owlv2, source: {tiny_owlv2}}}
    labels: [a dog]
    threshold: 0.3
    resources: {{batch_size: 4, num_cpus: 0.5}}
""")
    spec = load_job_spec(spec_file)
    run_image_job(spec, progress=False)
    rows = pads.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()
    captions = {r["id"]: r for r in rows if r["task"] == "caption"}
    assert len(captions) == 13 and sum(r["task"] == "detect" for r in rows) == 13
    assert captions["bad_empty.png"]["error"] == "empty file (0 bytes)"

    adapter = load_adapter_class("caption", "blip2")(spec.tasks[0])
    adapter.setup(torch.device("cpu"))
    names = ["sample_002.webp", "sample_004.gif", "sample_005.tiff"]
    images = [np.asarray(ImageOps.exif_transpose(Image.open(image_folder / n)).convert("RGB"))
              for n in names]
    direct = adapter([ImageInput(im, im.shape[1], im.shape[0]) for im in images])
    for name, out in zip(names, direct):
        assert captions[name]["text"] == out["text"]
        assert captions[name]["text"]  # the tiny model says something


def test_retry_errors_relabels_only_the_failed_inputs(ray_local, tiny_owlv2, tmp_path):
    """A file that was broken in the first run and mended since: a plain rerun keeps its error
    row, a rerun with retry_errors labels it (and the still-broken ones again), keeps every
    other row as written and leaves shards without errors untouched."""
    from labeler.testing.samples import jpeg_bytes, synthetic_image

    folder = tmp_path / "in"
    make_sample_images(folder, count=4, bad=True)  # 7 inputs: the 3 bad ones sort first
    out = tmp_path / "out"

    def spec(**kw):
        base = _spec(folder, out, tiny_owlv2, **kw)
        return base.model_copy(update={"input": base.input.model_copy(
            update={"files_per_shard": 4})})

    first = run_image_job(spec(), progress=False)
    assert (first.rows, first.errors) == (7, 3)
    before = {r["id"]: r for r in pads.dataset(out, format="parquet").to_table().to_pylist()}
    clean_shard = out / "detect" / "part-00001.parquet"  # sample_001..003: no error row
    clean_mtime = clean_shard.stat().st_mtime_ns

    (folder / "bad_truncated.jpg").write_bytes(jpeg_bytes(synthetic_image(320, 240, seed=7)))
    plain = run_image_job(spec(), progress=False)
    assert (plain.rows, plain.skipped_inputs, plain.retried_inputs) == (0, 7, 0)

    retried = run_image_job(spec(retry_errors=True), progress=False)
    assert (retried.rows, retried.errors, retried.retried_inputs) == (3, 2, 3)
    assert "3 retried" in retried.lines()[0]
    after = {r["id"]: r for r in pads.dataset(out, format="parquet").to_table().to_pylist()}
    assert set(after) == set(before)  # still one row per input
    mended = after["bad_truncated.jpg"]
    assert mended["error"] is None and (mended["width"], mended["height"]) == (320, 240)
    assert after["bad_empty.png"]["error"] == "empty file (0 bytes)"
    for id_ in ("sample_000.jpg", "sample_001.png", "sample_002.webp", "sample_003.bmp"):
        assert after[id_] == before[id_]  # kept as written, timings included
    assert clean_shard.stat().st_mtime_ns == clean_mtime
    assert (out / "_SUCCESS").exists()


def test_an_actor_running_two_batches_at_once_writes_the_same_rows(ray_local, image_folder,
                                                                   tiny_owlv2, tmp_path):
    """resources.concurrent_batches 2 (the default with a GPU): Ray Data runs two batches
    in the actor at once, in threads; every input gets the row it gets one batch at a time."""
    def rows(out, concurrent_batches):
        spec = _spec(image_folder, out, tiny_owlv2).model_copy(update={"input": _spec(
            image_folder, out, tiny_owlv2).input.model_copy(update={"files_per_shard": 2})})
        task = spec.tasks[0]
        spec = spec.model_copy(update={"tasks": [task.model_copy(update={
            "resources": task.resources.model_copy(update={
                "batch_size": 2, "concurrent_batches": concurrent_batches})})]})
        summary = run_image_job(spec, progress=False)
        assert (summary.rows, summary.errors) == (13, 3)
        table = pads.dataset(out, format="parquet").to_table().drop_columns(["timings"])
        return sorted(table.to_pylist(), key=lambda r: r["id"])

    together = rows(tmp_path / "two", 2)
    assert together == rows(tmp_path / "one", 1)
    assert sum(bool(r["detections"]) for r in together) >= 8


def test_input_fields_named_like_record_or_routing_columns_are_carried_apart(
        ray_local, tiny_owlv2, tmp_path):
    """A manifest's `shard`, `width` beside `input_width`, a WebDataset .json's `id`: each
    gets a column of its own, and the output reads back as one dataset."""
    import io
    import tarfile

    make_sample_images(tmp_path / "img", count=2, bad=False)
    names = sorted(p.name for p in (tmp_path / "img").iterdir())
    manifest = tmp_path / "in" / "m.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps(
        {"id": f"m{k}", "uri": str(tmp_path / "img" / name), "shard": "train", "width": 999,
         "input_width": k, "text": "note"}) + "\n" for k, name in enumerate(names)))
    out = tmp_path / "out"
    run_image_job(_spec(manifest, out, tiny_owlv2), progress=False)
    rows = {r["id"]: r for r in pads.dataset(out, format="parquet").to_table().to_pylist()}
    assert set(rows) == {"m0", "m1"}
    for k in range(2):
        row = rows[f"m{k}"]
        assert (row["input_shard"], row["input_input_width"], row["input_width"],
                row["input_text"]) == ("train", 999, k, "note")
        assert row["width"] == 480 and row["text"] is None  # the record's own fields

    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "s.tar", "w") as tar:
        for k, name in enumerate(names):
            for member, data in ((f"{k:04d}.jpg", (tmp_path / "img" / name).read_bytes()),
                                 (f"{k:04d}.json", json.dumps({"id": f"orig{k}",
                                                               "src": k}).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    run_image_job(_spec(tmp_path / "wds", tmp_path / "out_wds", tiny_owlv2), progress=False)
    rows = pads.dataset(tmp_path / "out_wds", format="parquet").to_table().to_pylist()
    assert sorted((r["id"], r["input_id"], r["src"]) for r in rows) == [
        ("s.tar/0000", "orig0", 0), ("s.tar/0001", "orig1", 1)]


def test_qwen2_vl_and_ovis2_tasks_get_whole_images(ray_local, tmp_path):
    """Their processors size each image from its own pixels (dynamic resolution): the
    decode stage hands them a 2400x1600 JPEG whole, where a Florence-2 job (a fixed 768 px
    input) gets it reduced to 1200x800, and a Qwen2-VL job that sets decode_min_side gets what it set."""
    from labeler.jobs.images import decoded_images
    from labeler.sources import plan_source
    from labeler.testing.samples import synthetic_image

    folder = tmp_path / "photos"
    folder.mkdir()
    synthetic_image(2400, 1600, seed=3).save(folder / "photo.jpg", quality=90)

    def decoded_shape(**flags) -> tuple:
        spec = load_job_spec(None, input=str(folder), output=str(tmp_path / "out"), **flags)
        todo = [item.row(False) for item in plan_source(str(folder), 256).items]
        (row,) = decoded_images(spec, todo).take_all()
        assert row["error"] == ""
        return row["image"].shape

    for family in ("qwen2_vl", "ovis2"):
        assert decoded_shape(task="caption", family=family, model="some/model") == (1600, 2400, 3)
    assert decoded_shape(task="caption", family="qwen2_vl", model="some/model",
                         decode_min_side=1008) == (800, 1200, 3)
    assert decoded_shape(task="caption", family="florence2", model="some/model") == (
        800, 1200, 3)
