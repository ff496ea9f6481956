"""`labeler export` on the output of a real (tiny OWLv2) detect job: the COCO file read by
pycocotools, the YOLO layout as Ultralytics looks up labels, and both written to S3."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml
from PIL import Image

from labeler.cli import main
from labeler.config import load_job_spec
from labeler.jobs.images import run_image_job
from labeler.testing.samples import make_sample_images

LABELS = ["cat", "dog"]
# The job asks for its labels through an ontology: what goes out are the label names.
QUERIES = {"cat": ["a photo of a cat"], "dog": ["a dog", "a puppy"]}


@pytest.fixture(scope="module")
def owlv2_job(ray_local, tiny_owlv2, tmp_path_factory):
    """A detect job over 6 sample images (every format, one EXIF-rotated, one GIF) and 3 bad
    files, its labels asked by the queries of QUERIES -> (output folder, {id: row})."""
    base = tmp_path_factory.mktemp("export_owlv2")
    make_sample_images(base / "images", count=6, bad=True)
    spec = load_job_spec(None, input=str(base / "images"), output=str(base / "out"),
                         task="detect", family="owlv2", model=tiny_owlv2, labels=LABELS,
                         threshold=0.3, batch_size=4)
    task = spec.tasks[0]
    spec = spec.model_copy(update={"tasks": [task.model_copy(update={
        "queries": QUERIES, "resources": task.resources.model_copy(update={"num_cpus": 0.5})})]})
    run_image_job(spec, progress=False)
    rows = pads.dataset(base / "out", format="parquet").to_table().to_pylist()
    return str(base / "out"), {r["id"]: r for r in rows}


def _export(capsys, *args) -> str:
    assert main(["export", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_cli_exports_a_real_job_as_coco_and_yolo(owlv2_job, tmp_path, capsys):
    from pycocotools.coco import COCO

    job, rows = owlv2_job
    good = {i: r for i, r in rows.items() if r["error"] is None}
    boxes = sum(len(r["detections"]) for r in good.values())
    assert len(good) == 6 and boxes > 0
    assert {d["label"] for r in good.values() for d in r["detections"]} == set(LABELS)
    assert all(json.loads(r["parameters"])["queries"] == QUERIES for r in good.values())
    out = _export(capsys, job, "--format", "coco", "--out", tmp_path / "coco")
    assert "skipped 3 error rows\n" in out and f"images: 6, boxes: {boxes}\n" in out

    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == LABELS
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == boxes
    for image in coco.loadImgs(coco.getImgIds()):
        row = good[image["file_name"]]
        assert (image["width"], image["height"]) == (row["width"], row["height"])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(annotations) == len(row["detections"])
        for annotation, d in zip(annotations, row["detections"]):
            assert coco.loadCats(annotation["category_id"])[0]["name"] == d["label"]
            assert annotation["bbox"] == pytest.approx(
                [d["x0"], d["y0"], d["x1"] - d["x0"], d["y1"] - d["y0"]], abs=1e-3)
            assert annotation["score"] == pytest.approx(d["score"], abs=1e-6)

    yolo = tmp_path / "yolo"
    out = _export(capsys, job, "--format", "yolo", "--out", yolo)
    assert f"images: 6, boxes: {boxes}\n" in out
    assert yaml.safe_load((yolo / "data.yaml").read_text())["names"] == dict(enumerate(LABELS))
    images = sorted(p for p in (yolo / "images").rglob("*") if p.is_file())
    # Ultralytics' lookup: the last /images/ becomes /labels/, the suffix .txt.
    for image in images:
        label = Path(str(image).replace("/images/", "/labels/")).with_suffix(".txt")
        assert len(label.read_text().splitlines()) == len(good[_row_id(image, yolo)]["detections"])
    assert [p.name for p in images if p.name.startswith("sample_004")] == ["sample_004.gif.png"]
    with Image.open(yolo / "images" / "sample_000.jpg") as rotated:  # stored 640x480, EXIF 6
        assert rotated.size == (480, 640) and rotated.getexif().get(0x0112, 1) == 1


def _row_id(image: Path, root: Path) -> str:
    name = image.relative_to(root / "images").as_posix()
    return name.removesuffix(".png") if name.endswith(".gif.png") else name


def test_export_reads_and_writes_s3(owlv2_job, s3_bucket, s3_env, tmp_path, capsys):
    job, _ = owlv2_job
    client = s3_env.client()
    for path in sorted(p for p in Path(job).rglob("*") if p.is_file()):
        client.put_object(Bucket=s3_bucket, Key=f"job/{path.relative_to(job).as_posix()}",
                          Body=path.read_bytes())
    _export(capsys, f"s3://{s3_bucket}/job", "--format", "yolo", "--out", f"s3://{s3_bucket}/yolo")
    _export(capsys, job, "--format", "yolo", "--out", tmp_path / "yolo")
    local = {p.relative_to(tmp_path / "yolo").as_posix(): p.read_bytes()
             for p in (tmp_path / "yolo").rglob("*") if p.is_file()}
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="yolo/")["Contents"]
    remote = {o["Key"].removeprefix("yolo/"): client.get_object(Bucket=s3_bucket, Key=o["Key"])
              ["Body"].read() for o in listed}
    assert sorted(remote) == sorted(local)
    assert all(remote[k] == local[k] for k in local if k != "data.yaml")
    assert "path" not in yaml.safe_load(remote["data.yaml"])  # the folder it is downloaded to

    out = _export(capsys, job, "--format", "coco", "--out", f"s3://{s3_bucket}/coco")
    assert f"output: s3://{s3_bucket}/coco/annotations.json" in out
    body = client.get_object(Bucket=s3_bucket, Key="coco/annotations.json")["Body"].read()
    assert len(json.loads(body)["images"]) == 6
    code = main(["export", job, "--format", "coco", "--out", f"s3://{s3_bucket}/coco"])
    assert code == 2 and "is not empty; pass --overwrite" in capsys.readouterr().err


def test_sliced_export_of_every_format_from_and_to_s3_equals_the_local_one(
        owlv2_job, s3_bucket, s3_env, tmp_path, capsys):
    """--slice on the real job (every image format, an EXIF-rotated JPEG, a GIF): each image
    of its oriented size is covered by its slices, every slice file has its window's size,
    and an export from and to S3 writes the same bytes as from and to folders."""
    from labeler.export.images import ImageName
    from labeler.export.slices import SliceOptions, slice_windows

    job, rows = owlv2_job
    client = s3_env.client()
    for path in sorted(p for p in Path(job).rglob("*") if p.is_file()):
        client.put_object(Bucket=s3_bucket, Key=f"slice-job/{path.relative_to(job).as_posix()}",
                          Body=path.read_bytes())
    flags = ["--format", "yolo", "--slice", "256", "--slice-overlap", "0.25"]
    local = _export(capsys, job, *flags, "--out", tmp_path / "sliced")
    remote = _export(capsys, f"s3://{s3_bucket}/slice-job", *flags,
                     "--out", f"s3://{s3_bucket}/sliced")
    good = {i: r for i, r in rows.items() if r["error"] is None}
    windows = {i: slice_windows(r["width"], r["height"], SliceOptions(256, 0.25))
               for i, r in good.items()}
    n = sum(len(w) for w in windows.values())
    assert f"sliced {len(good)} images into {n} slices of 256 px (overlap 0.25)" in local
    assert f"images: {n}, " in local and f"images: {n}, " in remote
    files = {p.relative_to(tmp_path / "sliced").as_posix(): p.read_bytes()
             for p in (tmp_path / "sliced").rglob("*") if p.is_file()}
    for id_, found in windows.items():
        stem = ImageName.of(id_).key  # "sample_004.gif": a suffix Ultralytics does not read
        for x0, y0, x1, y1 in found:
            (name,) = [k for k in files if k.startswith(f"images/{stem}_{x0}_{y0}_{x1}_{y1}.")]
            assert Image.open(tmp_path / "sliced" / name).size == (x1 - x0, y1 - y0)
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="sliced/")["Contents"]
    assert sorted(o["Key"].removeprefix("sliced/") for o in listed) == sorted(files)
    for key in files:
        if key != "data.yaml":  # its path differs: none on S3
            body = client.get_object(Bucket=s3_bucket, Key=f"sliced/{key}")["Body"].read()
            assert body == files[key], key


def test_preview_of_a_job_output_on_s3_equals_the_local_one(owlv2_job, s3_bucket, s3_env,
                                                            tmp_path, capsys):
    """`labeler preview` reads a job output under an s3:// prefix as it reads a folder: the
    same rows sampled, the same drawn JPEGs."""
    job, rows = owlv2_job
    client = s3_env.client()
    for path in sorted(p for p in Path(job).rglob("*") if p.is_file()):
        client.put_object(Bucket=s3_bucket, Key=f"preview-job/{path.relative_to(job).as_posix()}",
                          Body=path.read_bytes())
    pages = {}
    for name, source in [("local", job), ("s3", f"s3://{s3_bucket}/preview-job")]:
        assert main(["preview", source, "--out", str(tmp_path / name), "--limit", "4"]) == 0
        printed = capsys.readouterr().out
        assert f"{len(rows)} rows scanned" in printed and "shown: 4 of 6 rows" in printed
        pages[name] = {p.name: p.read_bytes() for p in (tmp_path / name / "images").iterdir()}
    assert len(pages["s3"]) == 4 and pages["s3"] == pages["local"]


def test_eval_of_a_real_job_reads_s3_as_it_reads_a_folder(owlv2_job, s3_bucket, s3_env,
                                                          tmp_path, capsys):
    """`labeler eval` against the job's own COCO export less every second box (those become
    false positives): the ground-truth counts are the boxes kept, and the figures read from
    an s3:// job output and ground truth equal those read from local files."""
    job, rows = owlv2_job
    _export(capsys, job, "--format", "coco", "--out", tmp_path / "coco")
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    coco["annotations"] = coco["annotations"][::2]
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps(coco))
    client = s3_env.client()
    for path in sorted(p for p in Path(job).rglob("*") if p.is_file()):
        client.put_object(Bucket=s3_bucket, Key=f"eval-job/{path.relative_to(job).as_posix()}",
                          Body=path.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="truth.json", Body=truth.read_bytes())
    figures = {}
    for name, output, gt in [("local", job, truth),
                             ("s3", f"s3://{s3_bucket}/eval-job", f"s3://{s3_bucket}/truth.json")]:
        assert main(["eval", output, "--coco", str(gt), "--json", str(tmp_path / f"{name}.json")]) == 0
        capsys.readouterr()
        figures[name] = json.loads((tmp_path / f"{name}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    kept = {name: sum(names[a["category_id"]] == name for a in coco["annotations"])
            for name in LABELS}
    boxes = {name: sum(d["label"] == name for r in rows.values() for d in r["detections"] or [])
             for name in LABELS}
    assert all(kept.values()) and all(boxes[name] > kept[name] for name in LABELS)
    local = {c["category"]: c for c in figures["local"]["categories"]}
    assert {name: local[name]["ground_truth"] for name in LABELS} == kept
    assert {name: local[name]["detections"] for name in LABELS} == boxes
    assert figures["local"]["images"]["evaluated"] == 6
    for key in ("categories", "images", "rows", "mean", "label_thresholds"):
        assert figures["s3"][key] == figures["local"][key]


def test_eval_against_a_yolo_export_equals_eval_against_the_coco_export(owlv2_job, tmp_path,
                                                                          capsys):
    """The job's own boxes as ground truth, once as `export --format coco` and once as
    `export --format yolo` (normalised to 6 decimals, sizes from the rows; the GIF's label
    keeps its .gif): every image is matched, and the figures agree."""
    job, rows = owlv2_job
    _export(capsys, job, "--format", "coco", "--out", tmp_path / "coco")
    _export(capsys, job, "--format", "yolo", "--out", tmp_path / "yolo")
    figures = {}
    for kind, truth in (("coco", tmp_path / "coco" / "annotations.json"),
                        ("yolo", tmp_path / "yolo")):
        assert main(["eval", job, f"--{kind}", str(truth), "--json",
                     str(tmp_path / f"{kind}.json")]) == 0
        capsys.readouterr()
        figures[kind] = json.loads((tmp_path / f"{kind}.json").read_text())
    assert figures["yolo"]["images"]["evaluated"] == figures["coco"]["images"]["evaluated"] == 6
    for got, expected in zip(figures["yolo"]["categories"], figures["coco"]["categories"]):
        assert (got["category"], got["ground_truth"], got["detections"]) == \
            (expected["category"], expected["ground_truth"], expected["detections"])
        for key in ("ap", "ap50", "best_f1"):
            assert got[key] == pytest.approx(expected[key], abs=1e-3), (got["category"], key)


def test_an_export_stopped_part_way_leaves_no_main_file_on_s3_or_on_disk(s3_bucket, s3_env,
                                                                         tmp_path):
    """Closing an S3 stream completes its upload: an export stopped while writing its main
    file (an error, Ctrl-C) must not leave a cut-off annotations.json that looks finished."""
    import pyarrow.fs as pafs

    from labeler.export.target import Target

    for uri in (f"s3://{s3_bucket}/stopped", str(tmp_path / "stopped")):
        target = Target(uri)
        with pytest.raises(KeyboardInterrupt):
            with target.final("annotations.json") as out:
                out.write(b'{"images": [' + b'{"id": 1}, ' * 100_000)
                raise KeyboardInterrupt
        listed = target.fs.get_file_info(pafs.FileSelector(target.path, recursive=True,
                                                           allow_not_found=True))
        assert [i.path for i in listed if i.type == pafs.FileType.File] == [], uri
        with target.final("annotations.json") as out:
            out.write(b"{}")
        with target.fs.open_input_stream(f"{target.path}/annotations.json") as f:
            assert f.read() == b"{}"
