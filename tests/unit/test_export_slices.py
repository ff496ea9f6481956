"""`labeler export --slice`: large images written as overlapping slices with their boxes
(labeler.export.slices), for YOLO and COCO, checked pixel by pixel and box by box."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from labeler.export.rows import Box, Row
from labeler.export.slices import SliceOptions, slice_row, slice_starts, slice_windows
from test_export import _export, _record, _write_job

# id -> (width, height, format); boxes as (label, score, x0, y0, x1, y1) in pixels.
IMAGES = {"field.png": (300, 200, "PNG"), "road.jpg": (100, 90, "JPEG")}
BOXES = {
    "field.png": [("car", 0.9, 10, 10, 40, 30),       # inside the first slice only
                  ("car", 0.8, 100, 50, 140, 70),     # across the first two slices' seam
                  ("person", 0.7, 250, 150, 260, 190)],  # in the right-hand slices
    "road.jpg": [("person", 0.6, 5, 5, 95, 85)],      # smaller than a slice: one slice
}
SIZE, OVERLAP = 128, 0.25


def test_slices_start_every_step_and_the_last_one_ends_at_the_edge():
    assert slice_starts(1000, 640, 0.2) == [0, 360]
    assert slice_starts(1500, 640, 0.25) == [0, 480, 860]
    assert slice_starts(640, 640, 0.2) == slice_starts(500, 640, 0.2) == [0]
    assert slice_windows(300, 200, SliceOptions(SIZE, OVERLAP)) == [
        (0, 0, 128, 128), (96, 0, 224, 128), (172, 0, 300, 128),
        (0, 72, 128, 200), (96, 72, 224, 200), (172, 72, 300, 200)]
    assert slice_windows(100, 90, SliceOptions(SIZE)) == [(0, 0, 100, 90)]


def _row(*boxes):
    return Row("a.png", "/a.png", 300, 200, tuple(Box(*b) for b in boxes))


def test_a_box_is_cut_to_the_slice_and_kept_when_enough_of_it_shows():
    window = (96, 0, 224, 128)
    part, dropped = slice_row(_row(("car", 0.8, 100, 50, 140, 70),   # inside: moved
                                   ("car", 0.7, 80, 10, 100, 20),    # 4 of 20 px wide show
                                   ("car", 0.6, 90, 10, 97, 20),     # 1 of 7 px shows: < 0.2
                                   ("car", 0.5, 0, 0, 50, 50),       # outside: not counted
                                   ("dot", 0.4, 150, 60, 150, 60)),  # no area, inside
                              window, min_visible=0.2)
    assert (part.width, part.height, part.window) == (128, 128, window)
    assert part.boxes == (Box("car", 0.8, 4, 50, 44, 70), Box("car", 0.7, 0, 10, 4, 20),
                          Box("dot", 0.4, 54, 60, 54, 60))
    assert dropped == 1


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    base = tmp_path_factory.mktemp("slice_job")
    rng = np.random.default_rng(0)
    records, pixels = [], {}
    for id_, (w, h, fmt) in IMAGES.items():
        pixels[id_] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = base / id_
        Image.fromarray(pixels[id_]).save(path, fmt)
        if fmt == "JPEG":  # the pixels the export decodes
            pixels[id_] = np.asarray(Image.open(path).convert("RGB"))
        records.append(_record(id_, str(path), "detect", "detect",
                               {"labels": ["car", "person"], "threshold": 0.1}, (w, h),
                               BOXES[id_]))
    return {"path": _write_job(base / "out", records, ["detect"], 2), "pixels": pixels}


def _expected_slices(id_, options):
    w, h, _ = IMAGES[id_]
    row = Row(id_, "", w, h, tuple(Box(*b) for b in BOXES[id_]))
    return [(window, slice_row(row, window, options.min_visible)[0])
            for window in slice_windows(w, h, options)]


def test_yolo_slices_hold_the_images_pixels_and_their_boxes(job, tmp_path, capsys):
    out = tmp_path / "yolo"
    code, stdout, _ = _export(capsys, job["path"], "--format", "yolo", "--out", out,
                              "--slice", SIZE, "--slice-overlap", OVERLAP)
    assert code == 0, stdout
    options = SliceOptions(SIZE, OVERLAP)
    expected = {id_: _expected_slices(id_, options) for id_ in IMAGES}
    n_slices = sum(len(v) for v in expected.values())
    n_boxes = sum(len(part.boxes) for v in expected.values() for _, part in v)
    assert n_slices == 7 and n_boxes == 5  # 3 x 2 slices and 1; the seam car is in two
    assert "sliced 2 images into 7 slices of 128 px (overlap 0.25); dropped 0 box parts" in stdout
    assert f"images: 7, boxes: {n_boxes}\n" in stdout
    names = yaml.safe_load((out / "data.yaml").read_text())["names"]
    for id_, slices in expected.items():
        stem, suffix = id_.rsplit(".", 1)
        for (x0, y0, x1, y1), part in slices:
            key = f"{stem}_{x0}_{y0}_{x1}_{y1}"
            image = Image.open(out / "images" / f"{key}.{'png' if suffix == 'png' else 'jpg'}")
            assert image.size == (x1 - x0, y1 - y0)
            if suffix == "png":  # lossless: exactly the image's pixels
                assert np.array_equal(np.asarray(image), job["pixels"][id_][y0:y1, x0:x1])
            lines = (out / "labels" / f"{key}.txt").read_text().splitlines()
            assert len(lines) == len(part.boxes)
            for line, box in zip(lines, part.boxes):
                cls, *numbers = line.split()
                assert names[int(cls)] == box.label
                w, h = x1 - x0, y1 - y0
                assert [float(n) for n in numbers] == pytest.approx(
                    [(box.x0 + box.x1) / 2 / w, (box.y0 + box.y1) / 2 / h,
                     (box.x1 - box.x0) / w, (box.y1 - box.y0) / h], abs=1e-6)
    # The seam car (100..140) is cut to 100..128 in the first slice, 28 of its 40 px, and
    # whole in the second (96..224) at 4..44.
    first = dict(expected["field.png"])[(0, 0, 128, 128)].boxes
    second = dict(expected["field.png"])[(96, 0, 224, 128)].boxes
    assert first == (Box("car", 0.9, 10, 10, 40, 30), Box("car", 0.8, 100, 50, 128, 70))
    assert second == (Box("car", 0.8, 4, 50, 44, 70),)


def test_empty_slices_can_be_left_out_and_slices_follow_their_images_split(
        job, tmp_path, capsys):
    from labeler.export.splits import split_of

    out = tmp_path / "yolo"
    code, stdout, _ = _export(capsys, job["path"], "--format", "yolo", "--out", out,
                              "--slice", SIZE, "--slice-overlap", OVERLAP,
                              "--skip-empty-slices", "--val-fraction", "0.5")
    assert code == 0, stdout
    options = SliceOptions(SIZE, OVERLAP)
    kept = {id_: [w for w, part in _expected_slices(id_, options) if part.boxes]
            for id_ in IMAGES}
    skipped = 7 - sum(len(v) for v in kept.values())
    assert skipped > 0 and f"skipped {skipped} slices without a box" in stdout
    for id_, windows in kept.items():
        split = split_of(id_, 0.5)
        stem = id_.rsplit(".", 1)[0]
        written = sorted(p.stem for p in (out / "labels" / split).glob(f"{stem}_*.txt"))
        assert written == sorted(f"{stem}_{x0}_{y0}_{x1}_{y1}" for x0, y0, x1, y1 in windows)


def test_coco_slices_are_images_of_their_own_with_the_slice_they_are(job, tmp_path, capsys):
    out = tmp_path / "coco"
    code, stdout, _ = _export(capsys, job["path"], "--format", "coco", "--out", out,
                              "--slice", SIZE, "--slice-overlap", OVERLAP,
                              "--slice-min-visible", "0.5")
    assert code == 0, stdout
    coco = json.loads((out / "annotations.json").read_text())
    options = SliceOptions(SIZE, OVERLAP, min_visible=0.5)
    expected = {(id_, window): part for id_ in IMAGES
                for window, part in _expected_slices(id_, options)}
    assert len(coco["images"]) == len(expected) == 7
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    for entry in coco["images"]:
        part = expected[(entry["labeler_id"], tuple(entry["slice"]))]
        assert (entry["width"], entry["height"]) == (part.width, part.height)
        assert Image.open(out / entry["file_name"]).size == (part.width, part.height)
        assert by_image.get(entry["id"], []) == [
            [b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0] for b in part.boxes]


@pytest.mark.parametrize("args, message", [
    (["--format", "yolo", "--slice-overlap", "0.3"],
     "--slice-overlap applies to slices: give --slice SIZE too"),
    (["--format", "yolo", "--skip-empty-slices"],
     "--skip-empty-slices applies to slices: give --slice SIZE too"),
    (["--format", "label-studio", "--slice", "640"],
     "--slice applies to coco and yolo: Label Studio reviews whole images"),
    (["--format", "yolo", "--slice", "16"], "--slice 16: a slice side of at least 32 px"),
    (["--format", "yolo", "--slice", "640", "--slice-overlap", "1"],
     "--slice-overlap 1: a share in [0, 1) of the slice side"),
    (["--format", "coco", "--slice", "640", "--slice-min-visible", "0"],
     "--slice-min-visible 0: a share in (0, 1] of a box's area"),
])
def test_bad_slice_options_are_refused_before_anything_is_written(job, tmp_path, capsys,
                                                                  args, message):
    code, _, err = _export(capsys, job["path"], "--out", tmp_path / "out", *args)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


def test_images_that_cannot_be_sliced_are_skipped_with_their_reason(tmp_path, capsys):
    """A source gone, one no longer an image, one of another size than labeled: each row is
    left out and counted with why; the good image is still sliced."""
    rng = np.random.default_rng(1)
    names = ["good.png", "gone.png", "garbage.png", "resized.png"]
    records = []
    for id_ in names:
        Image.fromarray(rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)).save(tmp_path / id_)
        records.append(_record(id_, str(tmp_path / id_), "detect", "detect", {"labels": ["car"]},
                               (150, 100), [("car", 0.9, 10, 10, 40, 30)]))
    job = _write_job(tmp_path / "out", records, ["detect"], len(names))
    (tmp_path / "gone.png").unlink()
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    Image.new("RGB", (300, 200)).save(tmp_path / "resized.png")  # larger than labeled
    code, stdout, _ = _export(capsys, job, "--format", "yolo", "--out", tmp_path / "yolo",
                              "--slice", "64")
    assert code == 0
    assert "skipped 3 rows whose image could not be exported" in stdout
    assert f"x1: cannot read {tmp_path / 'gone.png'}: " in stdout
    assert "x1: not a recognised image format" in stdout
    assert ("x1: the image is 300x200 now but was labeled at 150x100: it changed since the job"
            in stdout)
    windows = slice_windows(150, 100, SliceOptions(64))
    assert f"sliced 1 images into {len(windows)} slices of 64 px" in stdout
    assert sorted(p.stem for p in (tmp_path / "yolo" / "images").iterdir()) == sorted(
        f"good_{x0}_{y0}_{x1}_{y1}" for x0, y0, x1, y1 in windows)


def test_an_image_over_the_default_pixel_limit_that_the_job_labeled_is_sliced(job, tmp_path,
                                                                            capsys, monkeypatch):
    """A job with a raised input.max_pixels labeled an image over the default limit (an
    orthophoto, what slices are for): the export decodes what the job decoded. Here the
    default limit is lowered under the 300x200 image instead of writing 100 megapixels."""
    from labeler.config import InputSpec
    monkeypatch.setattr(InputSpec.model_fields["max_pixels"], "default", 300 * 200 - 1)
    out = tmp_path / "big"
    code, stdout, _ = _export(capsys, job["path"], "--format", "yolo", "--out", out,
                              "--slice", SIZE, "--slice-overlap", OVERLAP)
    assert code == 0 and "could not be exported" not in stdout
    assert len(list((out / "images").glob("field_*.png"))) == len(
        slice_windows(300, 200, SliceOptions(SIZE, OVERLAP)))
