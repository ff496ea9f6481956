"""`labeler export`: a job output written through the project's own sink (known boxes, an
error row, not-kept pseudo-labels, an EXIF-rotated image, an id in a sub-folder, a tar
member) -> COCO JSON and a YOLO dataset, checked number by number."""

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.cli import main
from labeler.media.image import decode_image
from labeler.sinks.parquet import ShardedParquetSink
from labeler.storage import byte_range_uri

DETECT_LABELS = ["dog", "cat", "owl"]  # owl has no box: its id is kept all the same
# id -> (stored size, encoded format, EXIF orientation)
IMAGES = {"a.jpg": ((64, 48), "JPEG", None), "sub/b.png": ((40, 30), "PNG", None),
          "rot.jpg": ((60, 40), "JPEG", 6), "empty.jpg": ((32, 32), "JPEG", None)}
TAR_ID, TAR_SIZE = "00000.tar/k1", (20, 16)
# Boxes as (label, score, x0, y0, x1, y1); the numbers are exact in float32 and 3 decimals.
DETECT_BOXES = {
    "a.jpg": [("dog", 0.875, 2.5, 3.25, 30.75, 20.5), ("cat", 0.375, 10, 10, 60, 40),
              ("", 0.25, 0, 0, 64, 48)],
    "sub/b.png": [("cat", 0.625, 1, 2, 39, 29)],
    "rot.jpg": [("dog", 0.75, 5, 10, 35, 50)],  # in the oriented 40x60 image
    "empty.jpg": [],
    TAR_ID: [("bird", 0.5, 4, 4, 12.5, 16)],
}
# Pseudo-label rows: (kept, filter_reason, boxes).
PSEUDO = {
    "a.jpg": (True, None, [("a dog", 0.625, 2, 3, 30, 20), ("grass", 0.125, 0, 30, 64, 48)]),
    "sub/b.png": (False, "below image threshold: best box 0.213 < 0.3",
                  [("a cat", 0.2125, 1, 2, 39, 29)]),
    "rot.jpg": (False, "no box: no query scored over 0.1", []),
    "empty.jpg": (True, None, [("a sky", 0.5, 0, 0, 32, 16)]),
    TAR_ID: (True, None, [("a bird", 0.375, 4, 4, 12, 16)]),
}
ERROR = "corrupt image data: image file is truncated"


def _encode(size, fmt, orientation, seed):
    rng = np.random.default_rng(seed)
    # Smooth content (a gradient plus a block), so that a rotation is visible and JPEG is kind.
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    pixels[: h // 3, : w // 4] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    options = {}
    if orientation:
        options["exif"] = Image.Exif()
        options["exif"][0x0112] = orientation
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def _shown_size(size, orientation):
    return size[::-1] if orientation in (5, 6, 7, 8) else size


def _record(id_, uri, task, task_name, parameters, size=None, boxes=None, **extra):
    detections = None if boxes is None else [
        {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
        for label, score, x0, y0, x1, y1 in boxes]
    return {"id": id_, "uri": uri, "width": size and size[0], "height": size and size[1],
            "task": task, "task_name": task_name, "model": "tiny", "model_family": "owlv2",
            "parameters": json.dumps(parameters), "detections": detections,
            "shard": 0, "part_index": 0, "last_part": True, **extra}


def _write_job(root, records, tasks, inputs):
    sink = ShardedParquetSink(root, {0: inputs}, tasks, "fingerprint")
    sink.add(pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA))
    sink.finish({"rows": len(records)})
    return str(root)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A job output with tasks detect, pseudo-label and caption over the same 6 inputs:
    {"path": the output, "sources": {id: source bytes}, "sizes": {id: shown size}}."""
    base = tmp_path_factory.mktemp("export_job")
    sources, sizes, uris = {}, {}, {}
    for seed, (id_, (size, fmt, orientation)) in enumerate(IMAGES.items()):
        path = base / "images" / id_
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(size, fmt, orientation, seed))
        sources[id_], sizes[id_], uris[id_] = path.read_bytes(), _shown_size(size, orientation), str(path)
    member = _encode(TAR_SIZE, "PNG", None, seed=9)
    with tarfile.open(base / "00000.tar", "w") as tar:
        info = tarfile.TarInfo("k1.png")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    with tarfile.open(base / "00000.tar") as tar:
        offset = tar.getmember("k1.png").offset_data
    sources[TAR_ID], sizes[TAR_ID] = member, TAR_SIZE
    uris[TAR_ID] = byte_range_uri(str(base / "00000.tar"), offset, len(member))
    detect = {"labels": DETECT_LABELS, "threshold": 0.1, "preprocess": "processor"}
    pseudo = {"threshold": 0.1, "image_threshold": 0.3}
    records = [_record("bad.jpg", str(base / "bad.jpg"), kind, name, params, error=ERROR)
               for kind, name, params in (("detect", "detect", detect),
                                          ("pseudo-label", "pseudo-label", pseudo),
                                          ("caption", "caption", {}))]
    for id_, boxes in DETECT_BOXES.items():
        kept, reason, pseudo_boxes = PSEUDO[id_]
        records += [
            _record(id_, uris[id_], "detect", "detect", detect, sizes[id_], boxes),
            _record(id_, uris[id_], "pseudo-label", "pseudo-label", pseudo, sizes[id_],
                    pseudo_boxes, kept=kept, filter_reason=reason),
            _record(id_, uris[id_], "caption", "caption", {}, sizes[id_], text="a picture")]
    path = _write_job(base / "out", records, ["detect", "pseudo-label", "caption"], 6)
    return {"path": path, "sources": sources, "sizes": sizes}


def _export(capsys, *args):
    """Run `labeler export` -> (exit code, stdout, stderr)."""
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_coco_boxes_categories_and_skipped_error_rows(job, tmp_path, capsys, monkeypatch):
    code, out, _ = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "coco",
                           "--task", "detect")
    assert code == 0
    assert f"skipped 1 error rows\n  x1: {ERROR}\n" in out
    assert "categories: 5\n" in out and "images: 5, boxes: 6\n" in out
    assert f"output: {tmp_path / 'coco' / 'annotations.json'}" in out
    monkeypatch.chdir(tmp_path)  # a relative --out is printed as given (docs/export.md)
    code, out, _ = _export(capsys, job["path"], "--format", "coco", "--out", "coco-out",
                           "--task", "detect")
    assert code == 0 and "output: coco-out/annotations.json\n" in out
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())

    # Categories: the spec's labels in order (owl with no box too), then the others sorted;
    # the empty label (a region proposal) is "object".
    names = ["dog", "cat", "owl", "bird", "object"]
    assert coco["categories"] == [{"id": i + 1, "name": n, "supercategory": ""}
                                  for i, n in enumerate(names)]
    ids = [TAR_ID, "a.jpg", "empty.jpg", "rot.jpg", "sub/b.png"]  # file order; bad.jpg skipped
    assert [(im["id"], im["file_name"], im["labeler_id"]) for im in coco["images"]] == \
        [(k + 1, id_, id_) for k, id_ in enumerate(ids)]
    for image in coco["images"]:
        assert (image["width"], image["height"]) == job["sizes"][image["labeler_id"]]
    assert coco["images"][1]["uri"].endswith("images/a.jpg")
    assert coco["info"]["labeler_output"] == job["path"] and coco["info"]["task"] == "detect"

    expected = [(k + 1, box) for k, id_ in enumerate(ids) for box in DETECT_BOXES[id_]]
    assert len(coco["annotations"]) == len(expected) == 6
    for n, (annotation, (image_id, (label, score, x0, y0, x1, y1))) in enumerate(
            zip(coco["annotations"], expected)):
        assert annotation["id"] == n + 1 and annotation["image_id"] == image_id
        assert annotation["category_id"] == names.index(label or "object") + 1
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert annotation["area"] == pytest.approx((x1 - x0) * (y1 - y0), abs=1e-3)
        assert annotation["score"] == score and annotation["iscrowd"] == 0


def test_coco_copy_images_keeps_bytes_and_orients_exif_rotated_ones(job, tmp_path, capsys):
    out = tmp_path / "coco"
    code, _, _ = _export(capsys, job["path"], "--format", "coco", "--out", out, "--task",
                         "detect", "--copy-images")
    assert code == 0
    coco = json.loads((out / "annotations.json").read_text())
    files = {im["labeler_id"]: im["file_name"] for im in coco["images"]}
    assert files == {TAR_ID: "images/00000.tar/k1.png", "a.jpg": "images/a.jpg",
                     "empty.jpg": "images/empty.jpg", "rot.jpg": "images/rot.jpg",
                     "sub/b.png": "images/sub/b.png"}
    for id_ in (TAR_ID, "a.jpg", "sub/b.png", "empty.jpg"):
        assert (out / files[id_]).read_bytes() == job["sources"][id_]
    _assert_oriented_copy(out / files["rot.jpg"], job["sources"]["rot.jpg"])


def _assert_oriented_copy(path, source):
    """The copy of an EXIF-rotated image: the oriented pixels, no orientation left."""
    copied = Image.open(path)
    assert copied.size == (40, 60) and copied.getexif().get(0x0112, 1) == 1
    expected = decode_image(source, max_pixels=10**6).pixels.astype(int)
    assert np.abs(np.asarray(copied.convert("RGB"), dtype=int) - expected).mean() < 3


def test_yolo_dataset_labels_images_and_data_yaml(job, tmp_path, capsys):
    out = tmp_path / "yolo"
    code, stdout, _ = _export(capsys, job["path"], "--format", "yolo", "--out", out, "--task",
                              "detect")
    assert code == 0 and "images: 5, boxes: 6\n" in stdout
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"path": str(out), "train": "images", "val": "images",
                    "names": {0: "dog", 1: "cat", 2: "owl", 3: "bird", 4: "object"}}
    names = list(data["names"].values())
    stems = {TAR_ID: ("00000.tar/k1", ".png"), "a.jpg": ("a", ".jpg"), "empty.jpg": ("empty", ".jpg"),
             "rot.jpg": ("rot", ".jpg"), "sub/b.png": ("sub/b", ".png")}
    for id_, (stem, suffix) in stems.items():
        image = out / "images" / f"{stem}{suffix}"
        if id_ != "rot.jpg":
            assert image.read_bytes() == job["sources"][id_]
        lines = (out / "labels" / f"{stem}.txt").read_text().splitlines()
        width, height = job["sizes"][id_]
        assert len(lines) == len(DETECT_BOXES[id_])
        for line, (label, _, x0, y0, x1, y1) in zip(lines, DETECT_BOXES[id_]):
            cls, *numbers = line.split(" ")
            assert int(cls) == names.index(label or "object")
            assert all(len(n.split(".")[1]) == 6 for n in numbers)
            expected = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height,
                        (x1 - x0) / width, (y1 - y0) / height]
            assert [float(n) for n in numbers] == pytest.approx(expected, abs=1e-6)
    assert (out / "labels" / "empty.txt").read_text() == ""  # a background image
    _assert_oriented_copy(out / "images" / "rot.jpg", job["sources"]["rot.jpg"])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        ["data.yaml"] + [f"images/{s}{x}" for s, x in stems.values()]
        + [f"labels/{s}.txt" for s, _ in stems.values()])


def test_split_is_a_fixed_function_of_the_id():
    from labeler.export.splits import split_of

    ids = [f"photos/{k:05d}.jpg" for k in range(10_000)]
    tenth = {i for i in ids if split_of(i, 0.1) == "val"}
    fifth = {i for i in ids if split_of(i, 0.2) == "val"}
    assert 900 <= len(tenth) <= 1100 and 1800 <= len(fifth) <= 2200  # +-1% at 3 sigma
    assert tenth < fifth  # a larger share only moves train images to val
    assert all(split_of(i, 0.0) == "train" for i in ids[:100])
    # Pinned: an id's split must not move between runs, machines or Python versions.
    assert [k for k in range(50) if split_of(ids[k], 0.1) == "val"] == [23, 37]


def test_val_fraction_splits_yolo_and_coco_by_id(job, tmp_path, capsys):
    """--val-fraction: the same images, labels and boxes as one set, each in its split's
    folder (YOLO) or file (COCO); data.yaml names the two image folders."""
    from labeler.export.splits import split_of

    splits = {id_: split_of(id_, 0.5) for id_ in DETECT_BOXES}
    assert set(splits.values()) == {"train", "val"}  # both splits have images here
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    for out, extra in ((whole, []), (parts, ["--val-fraction", "0.5"])):
        code, stdout, _ = _export(capsys, job["path"], "--format", "yolo", "--out", out,
                                  "--task", "detect", *extra)
        assert code == 0 and "images: 5, boxes: 6\n" in stdout
    n_val = sum(s == "val" for s in splits.values())
    assert f"  val: {n_val} images, " in stdout and f"  train: {5 - n_val} images, " in stdout
    data = yaml.safe_load((parts / "data.yaml").read_text())
    assert (data["train"], data["val"]) == ("images/train", "images/val")
    id_of_stem = {"00000.tar/k1": TAR_ID, "a": "a.jpg", "empty": "empty.jpg", "rot": "rot.jpg",
                  "sub/b": "sub/b.png"}
    for kind in ("images", "labels"):
        files = [p.relative_to(whole / kind) for p in (whole / kind).rglob("*") if p.is_file()]
        assert len(files) == len(list(p for p in (parts / kind).rglob("*") if p.is_file())) == 5
        for name in files:
            split = splits[id_of_stem[name.with_suffix("").as_posix()]]
            assert (parts / kind / split / name).read_bytes() == (whole / kind / name).read_bytes()

    code, stdout, _ = _export(capsys, job["path"], "--format", "coco", "--out",
                              tmp_path / "coco", "--task", "detect", "--val-fraction", "0.5")
    assert code == 0
    boxes = {}
    for split in ("train", "val"):
        coco = json.loads((tmp_path / "coco" / f"annotations_{split}.json").read_text())
        assert coco["info"]["split"] == split
        assert {im["labeler_id"] for im in coco["images"]} == {
            i for i, s in splits.items() if s == split}
        by_image = {im["id"]: im["labeler_id"] for im in coco["images"]}
        for a in coco["annotations"]:
            boxes.setdefault(by_image[a["image_id"]], []).append(a["bbox"])
    assert boxes == {id_: [[x0, y0, x1 - x0, y1 - y0] for _, _, x0, y0, x1, y1 in b]
                     for id_, b in DETECT_BOXES.items() if b}
    code, _, err = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "bad",
                           "--val-fraction", "1")
    assert code == 2 and "--val-fraction 1: a share in [0, 1)" in err


def test_label_studio_tasks_and_config(job, tmp_path, capsys):
    """Pre-annotations for Label Studio: a task per image with the boxes in percent, in the
    config the export writes beside them."""
    from labeler.serve.formats import parse_label_config

    out = tmp_path / "ls"
    prefix = "/data/local-files/?d=photos/"
    code, stdout, _ = _export(capsys, job["path"], "--format", "label-studio", "--out", out,
                              "--task", "detect", "--image-url-prefix", prefix)
    assert code == 0 and "images: 5, boxes: 6\n" in stdout
    assert f"output: {out / 'tasks.json'}" in stdout
    config = parse_label_config((out / "label_config.xml").read_text())
    assert config.labels == ["dog", "cat", "owl", "bird", "object"]
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["labeler_id"] for t in tasks] == [TAR_ID, "a.jpg", "empty.jpg", "rot.jpg",
                                                        "sub/b.png"]
    for task in tasks:
        id_ = task["data"]["labeler_id"]
        assert task["data"][config.image_key] == prefix + id_
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "owlv2:tiny"
        width, height = job["sizes"][id_]
        boxes = DETECT_BOXES[id_]
        assert len(prediction["result"]) == len(boxes)
        for region, (label, score, x0, y0, x1, y1) in zip(prediction["result"], boxes):
            assert (region["from_name"], region["to_name"], region["type"]) == (
                config.rectangle, config.image_name, "rectanglelabels")
            assert (region["original_width"], region["original_height"]) == (width, height)
            value = region["value"]
            assert value["rectanglelabels"] == [label or "object"]
            assert [value["x"], value["y"], value["width"], value["height"]] == pytest.approx(
                [100 * x0 / width, 100 * y0 / height, 100 * (x1 - x0) / width,
                 100 * (y1 - y0) / height], abs=1e-4)
            assert region["score"] == score
        if boxes:
            assert prediction["score"] == pytest.approx(np.mean([b[1] for b in boxes]))

    code, _, _ = _export(capsys, job["path"], "--format", "label-studio", "--out",
                         tmp_path / "uris", "--task", "detect")
    tasks = json.loads((tmp_path / "uris" / "tasks.json").read_text())
    assert tasks[1]["data"]["image"].endswith("images/a.jpg")  # the row's uri
    code, _, err = _export(capsys, job["path"], "--format", "label-studio", "--out",
                           tmp_path / "no", "--task", "detect", "--copy-images")
    assert code == 2 and "do not apply to label-studio" in err


def test_pseudo_labels_not_kept_rows_and_min_score(job, tmp_path, capsys):
    code, out, _ = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "a",
                           "--task", "pseudo-label")
    assert code == 0
    assert "skipped 2 not-kept rows (--include-not-kept exports them): " \
           "below image threshold x1, no box x1\n" in out
    coco = json.loads((tmp_path / "a" / "annotations.json").read_text())
    assert [im["labeler_id"] for im in coco["images"]] == [TAR_ID, "a.jpg", "empty.jpg"]
    # No `labels` in a pseudo-label task's parameters: the labels seen, sorted.
    assert [c["name"] for c in coco["categories"]] == ["a bird", "a dog", "a sky", "grass"]
    assert len(coco["annotations"]) == 4

    code, out, _ = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "b",
                           "--task", "pseudo-label", "--include-not-kept", "--min-score", 0.3)
    assert code == 0
    assert "exported 2 not-kept rows (--include-not-kept)\n" in out
    assert "dropped 2 boxes under --min-score 0.3\n" in out  # grass 0.125, a cat 0.2125
    coco = json.loads((tmp_path / "b" / "annotations.json").read_text())
    assert [im["labeler_id"] for im in coco["images"]] == [TAR_ID, "a.jpg", "empty.jpg",
                                                           "rot.jpg", "sub/b.png"]
    assert [c["name"] for c in coco["categories"]] == ["a bird", "a dog", "a sky"]
    assert sorted(a["score"] for a in coco["annotations"]) == [0.375, 0.5, 0.625]


def test_refusals_name_the_problem(job, tmp_path, capsys):
    code, out, err = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "x")
    assert code == 2 and out == ""
    assert "2 tasks with boxes in" in err and "detect, pseudo-label; choose one with --task" in err
    code, _, err = _export(capsys, job["path"], "--format", "yolo", "--out", tmp_path / "x",
                           "--task", "caption")
    assert code == 2
    assert "task 'caption' is a caption task: its rows carry no boxes" in err
    code, _, err = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "x",
                           "--task", "nope")
    assert code == 2 and "no task folder 'nope'" in err and "caption (caption)" in err
    assert not (tmp_path / "x").exists()

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    code, _, err = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "x",
                           "--task", "detect")
    assert code == 2 and "is not empty; pass --overwrite" in err
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    code, _, _ = _export(capsys, job["path"], "--format", "coco", "--out", tmp_path / "x",
                         "--task", "detect", "--overwrite")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["annotations.json"]

    # --overwrite never empties a folder holding the job output itself.
    code, _, err = _export(capsys, job["path"], "--format", "coco", "--out",
                           os.path.dirname(job["path"]), "--task",
                           "detect", "--overwrite")
    assert code == 2 and "--overwrite would delete it" in err


def test_a_job_output_that_is_not_one_is_refused(job, tmp_path, capsys):
    """No folder, no task folder, or a shard that is not Parquet: exit 2 naming the problem,
    nothing written."""
    import shutil

    out = tmp_path / "out"
    code, _, err = _export(capsys, tmp_path / "nope", "--format", "coco", "--out", out)
    assert code == 2 and "no job output at" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _export(capsys, tmp_path / "empty", "--format", "coco", "--out", out)
    assert code == 2 and "no task folders in" in err
    broken = tmp_path / "broken"
    shutil.copytree(job["path"], broken)
    (broken / "detect" / "part-00001.parquet").write_bytes(b"not parquet at all")
    code, _, err = _export(capsys, broken, "--format", "coco", "--out", out, "--task", "detect")
    assert code == 2 and "holds a file that is not readable Parquet" in err
    assert "part-00001.parquet" in err
    (broken / "detect" / "part-00000.parquet").write_bytes(b"")  # the file the task is read from
    code, _, err = _export(capsys, broken, "--format", "coco", "--out", out, "--task", "detect")
    assert code == 2 and "not readable Parquet" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def video_job(tmp_path_factory):
    """A frame task: two sampled frames of one video and a truncation error row."""
    base = tmp_path_factory.mktemp("export_video")
    params = {"labels": ["car"], "threshold": 0.1}
    rows = [_record("v.mp4", str(base / "v.mp4"), "detect", "detect", params, (64, 48),
                    [("car", 0.5, 8, 8, 24, 40)], frame_index=0, timestamp_s=0.0, part_index=0,
                    last_part=False),
            _record("v.mp4", str(base / "v.mp4"), "detect", "detect", params, (64, 48), [],
                    frame_index=25, timestamp_s=1.0, part_index=1, last_part=False),
            _record("v.mp4", str(base / "v.mp4"), "detect", "detect", params,
                    error="truncated or corrupt video: decoding stopped after the frame at 1.0 s",
                    timestamp_s=1.0, part_index=2, last_part=True)]
    return _write_job(base / "out", rows, ["detect"], 1)


def test_video_frames_export_to_coco_only(video_job, tmp_path, capsys):
    code, out, _ = _export(capsys, video_job, "--format", "coco", "--out", tmp_path / "c")
    assert code == 0 and "skipped 1 error rows" in out
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    assert [(im["id"], im["file_name"], im["frame_index"], im["timestamp_s"], im["video_id"])
            for im in coco["images"]] == [(1, "v.mp4#frame=0", 0, 0.0, "v.mp4"),
                                          (2, "v.mp4#frame=25", 25, 1.0, "v.mp4")]
    assert [(a["image_id"], a["bbox"]) for a in coco["annotations"]] == [(1, [8, 8, 16, 32])]
    code, _, err = _export(capsys, video_job, "--format", "yolo", "--out", tmp_path / "y")
    assert code == 2 and "labels video frames, and a YOLO dataset needs an image file" in err
    code, _, err = _export(capsys, video_job, "--format", "coco", "--out", tmp_path / "y",
                           "--copy-images")
    assert code == 2 and "no files to copy; export it without --copy-images" in err
    code, _, err = _export(capsys, video_job, "--format", "coco", "--out", tmp_path / "y",
                           "--slice", "640")
    assert code == 2 and "no files to copy; export it without --slice" in err
    assert not (tmp_path / "y").exists()


def test_ids_that_would_share_a_label_file_are_reported(tmp_path, capsys):
    """c.jpg and c.png would both be labeled by labels/c.txt: the second is left out."""
    params = {"labels": ["x"]}
    records = []
    for id_ in ("c.jpg", "c.png", "gone.jpg"):
        (tmp_path / id_).write_bytes(_encode((8, 8), "PNG" if id_ == "c.png" else "JPEG", None, 0))
        records.append(_record(id_, str(tmp_path / id_), "detect", "detect", params, (8, 8),
                               [("x", 0.5, 0, 0, 4, 4)]))
    (tmp_path / "gone.jpg").unlink()
    path = _write_job(tmp_path / "out", records, ["detect"], 3)
    code, out, _ = _export(capsys, path, "--format", "yolo", "--out", tmp_path / "y")
    assert code == 0 and "images: 1, boxes: 1\n" in out
    assert "skipped 2 rows whose image could not be exported\n" in out
    assert "x1: 'c.png' would share its label file labels/c.txt with an image exported " \
           "before it\n" in out
    assert f"x1: cannot read {tmp_path / 'gone.jpg'}: " in out
    assert sorted(p.name for p in (tmp_path / "y" / "labels").iterdir()) == ["c.txt"]
    # COCO writes no label files: both images are copied.
    code, out, _ = _export(capsys, path, "--format", "coco", "--out", tmp_path / "c",
                           "--copy-images")
    assert code == 0 and "skipped 1 rows whose image could not be exported\n" in out
    assert sorted(p.name for p in (tmp_path / "c" / "images").iterdir()) == ["c.jpg", "c.png"]
    # Nor do two splits' label files meet: with a validation share of 0.7, c.jpg goes to
    # val and c.png to train (split_of hashes the id).
    code, out, _ = _export(capsys, path, "--format", "yolo", "--out", tmp_path / "s",
                           "--val-fraction", "0.7")
    assert code == 0 and "would share" not in out
    assert sorted(str(p.relative_to(tmp_path / "s" / "labels"))
                  for p in (tmp_path / "s" / "labels").rglob("*.txt")) == ["train/c.txt",
                                                                           "val/c.txt"]


def test_phone_and_web_formats_in_an_export():
    """A HEIC (Ultralytics reads .heic) is copied as it is; an AVIF, which it does not read,
    becomes a PNG of the pixels the model saw, at the oriented size."""
    from labeler.export.images import image_bytes

    pixels = np.zeros((30, 40, 3), np.uint8)
    pixels[:, 20:] = 255
    for fmt, suffix in (("HEIF", ".heic"), ("AVIF", ".png")):
        buffer = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(pixels).save(buffer, fmt, quality=90, exif=exif.tobytes())
        data, got_suffix, size = image_bytes(buffer.getvalue())
        assert (got_suffix, size) == (suffix, (30, 40))
        if fmt == "HEIF":
            assert data == buffer.getvalue()
        else:
            written = Image.open(io.BytesIO(data))
            assert written.format == "PNG" and written.size == (30, 40)
            assert np.array_equal(np.asarray(written), decode_image(buffer.getvalue(), 10**6).pixels)


def test_overwrite_never_empties_a_folder_inside_the_job_output(tmp_path, capsys):
    """--out job/detect --overwrite would delete the task's part files before reading them."""
    (tmp_path / "a.jpg").write_bytes(_encode((8, 8), "JPEG", None, 0))
    path = _write_job(tmp_path / "out", [_record("a.jpg", str(tmp_path / "a.jpg"), "detect",
                                                 "detect", {"labels": ["x"]}, (8, 8), [])],
                      ["detect"], 1)
    parts = sorted((tmp_path / "out" / "detect").iterdir())
    for out in (tmp_path / "out" / "detect", tmp_path / "out"):
        code, _, err = _export(capsys, path, "--format", "coco", "--out", out, "--overwrite")
        assert code == 2, err
        assert sorted((tmp_path / "out" / "detect").iterdir()) == parts
    assert "is inside the job output" in _export(
        capsys, path, "--format", "coco", "--out", tmp_path / "out" / "detect",
        "--overwrite")[2]


def test_overwrite_empties_an_out_that_is_a_link_to_a_folder(tmp_path, capsys):
    """pyarrow emptied nothing through the link, and said nothing: an earlier export's files
    stayed beside the new one."""
    (tmp_path / "a.jpg").write_bytes(_encode((8, 8), "JPEG", None, 0))
    path = _write_job(tmp_path / "out", [_record("a.jpg", str(tmp_path / "a.jpg"), "detect",
                                                 "detect", {"labels": ["x"]}, (8, 8), [])],
                      ["detect"], 1)
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "stale.json").write_text("{}")
    (tmp_path / "latest").symlink_to(folder, target_is_directory=True)
    code, _, err = _export(capsys, path, "--format", "coco", "--out", tmp_path / "latest",
                           "--overwrite")
    assert code == 0, err
    assert (folder / "annotations.json").is_file() and not (folder / "stale.json").exists()
    assert (tmp_path / "latest").is_symlink()


@pytest.mark.parametrize("command, flags", [("export", ["--format", "coco", "--task", "a"]),
                                            ("fuse", ["--tasks", "a,b"])])
def test_an_out_inside_the_job_output_is_refused_before_anything_is_written(
        tmp_path, capsys, command, flags):
    """A folder inside the job output would read as a task folder to the job's readers and
    travel into `labeler track`'s copies, even when it is empty or new."""
    (tmp_path / "a.jpg").write_bytes(_encode((8, 8), "JPEG", None, 0))
    path = _write_job(tmp_path / "out", [
        _record("a.jpg", str(tmp_path / "a.jpg"), "detect", name, {"labels": ["x"]}, (8, 8), [])
        for name in ("a", "b")], ["a", "b"], 1)
    (tmp_path / "out" / "empty").mkdir()
    files = sorted((tmp_path / "out").rglob("*"))
    for out, where in ((tmp_path / "out" / "new", "is inside"),
                       (tmp_path / "out" / "empty", "is inside"),
                       (tmp_path / "out" / "a" / "new", "is inside"), (tmp_path / "out", "is")):
        for overwrite in ([], ["--overwrite"]):
            code = main([command, path, *flags, "--out", str(out), *overwrite])
            printed, err = capsys.readouterr()
            assert (code, printed) == (2, "")
            assert err == (f"error: --out {str(out)!r} {where} the job output {path!r}: choose "
                           f"a folder outside it\n")
    assert sorted((tmp_path / "out").rglob("*")) == files
    code = main([command, path, *flags, "--out", str(tmp_path / "beside")])
    assert code == 0, capsys.readouterr().err


def test_label_studio_urls_percent_encode_ids_behind_a_web_prefix_only():
    """`#` would end the URL's path (a fragment), `&` the local-files `d=` value."""
    from labeler.export.label_studio import media_url

    assert media_url("/data/local-files/?d=photos/", "my photo #1.jpg") == (
        "/data/local-files/?d=photos/my%20photo%20%231.jpg")
    assert media_url("https://cdn.example.com/p/", "a&b?/c%.jpg") == (
        "https://cdn.example.com/p/a%26b%3F/c%25.jpg")
    # Cloud storage URIs name the object key as it is.
    assert media_url("s3://bucket/photos/", "my photo #1.jpg") == (
        "s3://bucket/photos/my photo #1.jpg")


def test_mot_frame_rate_is_a_whole_number_rounded_half_up_and_at_least_one():
    from labeler.export.mot import seqinfo
    from labeler.export.rows import Row

    for fps, rate in ((12.5, 13), (29.97, 30), (0.5, 1), (25.0, 25)):
        frame = Row("v.mp4", "v.mp4", 64, 48, (), frame_index=0,
                    video={"fps": fps, "duration_s": 2.0})
        assert f"frameRate={rate}\n" in seqinfo([frame]), fps


def test_label_studio_tasks_follow_the_ids_files_order(job, tmp_path, capsys):
    """Label Studio shows tasks in import order: a review queue written best first by
    `labeler select` stays in that order, not the job's."""
    ids = tmp_path / "queue.txt"
    ids.write_text("sub/b.png\nrot.jpg\nmissing.jpg\na.jpg\n")
    code, stdout, _ = _export(capsys, job["path"], "--format", "label-studio", "--out",
                              tmp_path / "ls", "--task", "detect", "--ids-file", ids)
    assert code == 0, stdout
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["data"]["labeler_id"] for t in tasks] == ["sub/b.png", "rot.jpg", "a.jpg"]


@pytest.mark.parametrize("command", [["stats"], ["select"], ["preview", "--out", "{tmp}/p"],
                                     ["export", "--format", "coco", "--out", "{tmp}/e"]])
def test_a_job_with_no_shard_committed_yet_is_not_called_a_wrong_path(tmp_path, capsys,
                                                                      command):
    """A running job's output holds _job.json (and staged shards) until its first commit."""
    job = tmp_path / "job"
    ShardedParquetSink(job, {0: 1}, ["detect"], "fingerprint")  # writes _job.json
    (job / "detect").mkdir()
    for staged in ([], [".part-00000.parquet.tmp"]):
        for name in staged:
            (job / "detect" / name).write_bytes(b"being written")
        name, *flags = command
        code = main([name, str(job), *(flag.format(tmp=tmp_path) for flag in flags)])
        printed, err = capsys.readouterr()
        assert (code, printed) == (2, "")
        assert err == (f"error: no shard is committed yet in {str(job)!r}: its job is "
                       f"running, or stopped before its first shard (a rerun resumes it)\n")
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()
