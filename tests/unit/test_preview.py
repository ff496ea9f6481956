"""`labeler preview`: job outputs written through the project's own sink (known boxes, a
caption with markup, OCR lines, error rows, an image deleted after the job, video frame rows)
-> the drawn JPEGs and index.html, checked pixel by pixel and line by line. No Ray."""

import io
import json
import re
from html import unescape

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from labeler.actors.predictor import OUTPUT_SCHEMA
from labeler.cli import main
from labeler.preview import PreviewOptions, run_preview
from labeler.preview.draw import OCR_COLOR, annotate, box_caption, label_color
from labeler.export.rows import Box
from labeler.preview.sample import OcrLine, rank, row_key
from labeler.sinks.parquet import ShardedParquetSink
from labeler.testing.samples import jpeg_bytes, synthetic_image
from labeler.testing.videos import HEIGHT, WIDTH, X264_GOP, encode_video, level_index

GREY = 128
# boxed.png: a 2048x1024 grey image, drawn at 1024x512 (every coordinate halved).
BOXED_SIZE = (2048, 1024)
DOG = ("dog", 0.9, 400, 200, 1600, 800)  # drawn (200, 100)-(800, 400)
CAT = ("cat", 0.2, 1700, 600, 2000, 960)  # drawn (850, 300)-(1000, 480)
SCRIPT = '<script>alert("x")</script> & a dog'
WEIRD_ID = 'odd <b>&"q".jpg'
GOOD_IDS = [f"img{i:02d}.jpg" for i in range(10)] + ["boxed.png", "gone.jpg", WEIRD_ID]
TRUNCATED = "corrupt image data: image file is truncated"
# id -> error reason; oom.jpg is a readable image the model failed on.
ERRORS = {"bad1.jpg": TRUNCATED, "bad2.jpg": TRUNCATED,
          "bad3.png": "not a recognised image format", "oom.jpg": "predict failed: out of memory"}
OCR_QUAD = (600, 600, 1800, 600, 1800, 900, 600, 900)  # drawn (300, 300)-(900, 450)
VIDEO_FRAMES = [0, 7, 23, 99]  # 99: the 30-frame video has no such frame
JPEG_TOLERANCE = 40


def _record(id_, uri, task, size=None, boxes=None, part=0, last=True, **extra):
    detections = None if boxes is None else [
        {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
        for label, score, x0, y0, x1, y1 in boxes]
    return {"id": id_, "uri": uri, "width": size and size[0], "height": size and size[1],
            "task": task, "task_name": task, "model": "tiny/owlv2", "model_family": "owlv2",
            "parameters": json.dumps({"labels": ["dog", "cat"]}), "detections": detections,
            "shard": 0, "part_index": part, "last_part": last, **extra}


def _write_job(root, records, tasks, inputs):
    sink = ShardedParquetSink(root, {0: inputs}, tasks, "fingerprint")
    sink.add(pa.Table.from_pylist(records, schema=OUTPUT_SCHEMA))
    sink.finish({"rows": len(records)})
    return str(root)


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """An image job with tasks detect, caption and ocr over the same inputs, and a video job
    with frame rows: {"images": output, "video": output, "uris": {id: uri}}."""
    base = tmp_path_factory.mktemp("preview_job")
    (base / "in").mkdir()
    uris = {}
    for i, id_ in enumerate(GOOD_IDS + list(ERRORS)):
        path = base / "in" / id_
        uris[id_] = str(path)
        if id_ == "boxed.png":
            path.write_bytes(_png(np.full((BOXED_SIZE[1], BOXED_SIZE[0], 3), GREY, np.uint8)))
        elif id_ not in ("bad1.jpg", "bad2.jpg", "bad3.png"):  # those are missing files
            path.write_bytes(jpeg_bytes(synthetic_image(64, 48, seed=i)))
    records = []
    for id_ in GOOD_IDS:
        size = BOXED_SIZE if id_ == "boxed.png" else (64, 48)
        boxes = [DOG, CAT] if id_ == "boxed.png" else [("dog", 0.5, 4, 4, 40, 30)]
        regions = [dict(zip(("x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3"), OCR_QUAD),
                        text="HELLO <i>")] if id_ == "boxed.png" else []
        records += [
            _record(id_, uris[id_], "detect", size, boxes),
            _record(id_, uris[id_], "caption", size,
                    text=SCRIPT if id_ == "boxed.png" else f"a picture of {id_}"),
            _record(id_, uris[id_], "ocr", size, text="HELLO", ocr_regions=regions)]
    for id_, reason in ERRORS.items():
        records += [_record(id_, uris[id_], task, error=reason)
                    for task in ("detect", "caption", "ocr")]
    images = _write_job(base / "out", records, ["detect", "caption", "ocr"],
                        len(GOOD_IDS) + len(ERRORS))
    (base / "in" / "gone.jpg").unlink()  # deleted after the job

    video = encode_video(base / "in" / "clip.mp4", "libx264", count=30, options=X264_GOP)
    frames = [_record("clip.mp4", video, "detect", (WIDTH, HEIGHT),
                      [("car", 0.75, 8, 8, 40, 40)], part=k, last=k == len(VIDEO_FRAMES) - 1,
                      frame_index=n, timestamp_s=n / 10)
              for k, n in enumerate(VIDEO_FRAMES)]
    frames.append(_record("broken.mp4", str(base / "in" / "broken.mp4"), "detect",
                          error="not a recognised video container: Invalid data"))
    videos = _write_job(base / "video-out", frames, ["detect"], 2)
    return {"images": images, "video": videos, "uris": uris}


def _preview(job_path, out, **options):
    return run_preview(PreviewOptions(output=job_path, out=str(out), **options))


def _jpegs(out):
    return sorted((out / "images").glob("*.jpg"))


def _card_ids(html):
    """The row ids of the page's cards, in page order."""
    return [unescape(m) for m in re.findall(r'<div class="id">(.*?)</div>', html)]


def _card_text(html, row_id):
    """The HTML of the card of `row_id`."""
    (card,) = [c for c in html.split('<div class="card">')[1:]
               if f'<div class="id">{row_id}</div>' in c]
    return card


def _rgb(path, x, y):
    return np.asarray(Image.open(path).convert("RGB"))[y, x].astype(int)


def _near(actual, expected):
    return bool(np.all(np.abs(np.asarray(actual) - np.asarray(expected)) <= JPEG_TOLERANCE))


def test_jpeg_per_sampled_row_and_summary(job, tmp_path, capsys):
    code = main(["preview", job["images"], "--out", str(tmp_path / "p"), "--task", "detect",
                 "--limit", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(_jpegs(tmp_path / "p")) == 5
    assert "task: detect (detect), 17 rows scanned\n" in out
    assert f"shown: 5 of {len(GOOD_IDS)} rows without an error (seed 0)\n" in out
    assert f"errors: 4 rows\n  x2: {TRUNCATED}\n" in out
    assert f"page: {tmp_path / 'p' / 'index.html'}\n" in out

    # All good rows: one JPEG each, except gone.jpg, which is an entry without one; a rerun
    # into the same folder replaces the earlier images.
    summary = _preview(job["images"], tmp_path / "p", task="detect", limit=100)
    assert len(summary.entries) == len(GOOD_IDS)
    assert len(_jpegs(tmp_path / "p")) == len(GOOD_IDS) - 1
    assert sorted(e.row.id for e in summary.entries) == sorted(GOOD_IDS)


def test_sample_is_stable_ranked_by_hash_and_changes_with_the_seed(job, tmp_path):
    first = _preview(job["images"], tmp_path / "a", task="detect", limit=5)
    again = _preview(job["images"], tmp_path / "b", task="detect", limit=5)
    other = _preview(job["images"], tmp_path / "c", task="detect", limit=5, seed=1)
    more = _preview(job["images"], tmp_path / "d", task="detect", limit=8)
    ids = [e.row.id for e in first.entries]
    assert ids == [e.row.id for e in again.entries]
    assert [p.name for p in _jpegs(tmp_path / "a")] == [p.name for p in _jpegs(tmp_path / "b")]
    assert set(ids) != {e.row.id for e in other.entries}
    assert [e.row.id for e in more.entries][:5] == ids  # a larger limit shows more of the same
    # The 5 lowest ranks of hash(seed, id), in rank order: not the first rows of the files.
    assert ids == sorted(GOOD_IDS, key=lambda i: rank(row_key(i), 0))[:5]
    assert ids != sorted(GOOD_IDS)[:5]
    page = (tmp_path / "a" / "index.html").read_text()
    assert _card_ids(page) == ids


def test_boxes_are_drawn_scaled_with_label_colors_and_min_score_hides(job, tmp_path):
    summary = _preview(job["images"], tmp_path / "all", task="detect", limit=100)
    hidden = _preview(job["images"], tmp_path / "min", task="detect", limit=100, min_score=0.5)
    (boxed,) = [e for e in summary.entries if e.row.id == "boxed.png"]
    jpeg = tmp_path / "all" / boxed.image
    assert Image.open(jpeg).size == (1024, 512)  # long side 2048 -> 1024
    dog, cat = label_color("dog"), label_color("cat")
    assert _near(_rgb(jpeg, 201, 250), dog)  # the dog box's left edge, at x0 / 2 = 200
    assert _near(_rgb(jpeg, 500, 399), dog)  # its bottom edge, at y1 / 2 = 400
    for x, y in ((190, 250), (212, 250), (500, 250), (500, 410)):  # outside and inside it
        assert _near(_rgb(jpeg, x, y), (GREY,) * 3), (x, y)
    assert _near(_rgb(jpeg, 851, 400), cat)  # the cat box (score 0.2) is drawn...

    (boxed_min,) = [e for e in hidden.entries if e.row.id == "boxed.png"]
    jpeg_min = tmp_path / "min" / boxed_min.image
    assert _near(_rgb(jpeg_min, 851, 400), (GREY,) * 3)  # ...but not under --min-score 0.5
    assert _near(_rgb(jpeg_min, 201, 250), dog)
    assert [b.label for b in boxed_min.boxes] == ["dog"] and boxed_min.hidden_boxes == 1
    page = (tmp_path / "min" / "index.html").read_text()
    assert "1 box (+1 under --min-score hidden)" in page
    assert "dog 0.90</li>" in page and "cat 0.20" not in page
    page = (tmp_path / "all" / "index.html").read_text()
    assert "cat 0.20</li>" in page
    card = _card_text(page, "img03.jpg")  # each card: size, box count, labels with scores
    assert '<div class="small">64x48, 1 box</div>' in card and ">dog 0.50</li>" in card


def test_a_box_caption_names_its_track_when_it_has_one():
    assert box_caption(Box("dog", 0.871, 0, 0, 1, 1)) == "dog 0.87"
    assert box_caption(Box("dog", 0.871, 0, 0, 1, 1, track_id=3)) == "dog #3 0.87"
    assert box_caption(Box("", 0.5, 0, 0, 1, 1)) == "object 0.50"


def test_annotate_draws_boxes_and_ocr_quads_on_the_array():
    pixels = np.full((100, 200, 3), GREY, np.uint8)
    box = Box("dog", 0.9, 40, 40, 160, 90)  # full size 400x200: drawn halved
    line = OcrLine("HI", ((20, 120), (200, 120), (200, 180), (20, 180)))
    image = np.asarray(annotate(pixels, 400, 200, [box], [line], max_side=200))
    assert image.shape == (100, 200, 3)
    assert tuple(image[30, 20]) == label_color("dog")  # left edge at x = 40 / 2
    assert tuple(image[44, 50]) == (GREY,) * 3  # inside
    assert tuple(image[30, 19]) == (GREY,) * 3  # just outside
    assert tuple(image[75, 10]) == OCR_COLOR  # the quad's left edge at x = 20 / 2
    assert tuple(image[75, 50]) == (GREY,) * 3


def test_page_escapes_captions_ids_and_ocr_text(job, tmp_path):
    summary = _preview(job["images"], tmp_path / "cap", task="caption", limit=100)
    page = (tmp_path / "cap" / "index.html").read_text()
    assert "<script" not in page and "alert(&quot;x&quot;)" in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a dog" in page
    assert "odd &lt;b&gt;&amp;&quot;q&quot;.jpg" in page and "<b>&" not in page
    assert WEIRD_ID in _card_ids(page)
    (weird,) = [e for e in summary.entries if e.row.id == WEIRD_ID]
    assert re.fullmatch(r"images/[A-Za-z0-9_-]+\.jpg", weird.image)  # a safe file name
    assert "Preview of task caption <span class=small>(caption)</span>" in page
    assert "tiny/owlv2 (owlv2)" in page
    assert "no boxes" not in page and "box" not in _card_text(page, "img00.jpg")

    _preview(job["images"], tmp_path / "ocr", task="ocr", limit=100)
    page = (tmp_path / "ocr" / "index.html").read_text()
    assert "<li>HELLO &lt;i&gt;</li>" in page and "<i>" not in page


def test_error_rows_are_counted_and_listed_not_drawn(job, tmp_path):
    summary = _preview(job["images"], tmp_path / "p", task="detect", limit=100)
    assert {e.row.id for e in summary.entries}.isdisjoint(ERRORS)
    assert summary.scan.errors.total == 4
    page = (tmp_path / "p" / "index.html").read_text()
    assert "<h2>Errors: 4 rows</h2>" in page
    assert f"<tr><td>2</td><td>{TRUNCATED}</td></tr>" in page
    assert "<tr><td>1</td><td>predict failed: out of memory</td></tr>" in page
    for id_, reason in ERRORS.items():
        assert f"<tr><td>{id_}</td><td>{job['uris'][id_]}</td><td>{reason}</td></tr>" in page


def test_errors_flag_shows_only_error_rows(job, tmp_path, capsys):
    code = main(["preview", job["images"], "--out", str(tmp_path / "e"), "--task", "detect",
                 "--errors"])
    out = capsys.readouterr().out
    assert code == 0 and "shown: 4 of 4 error rows (seed 0)\n" in out
    page = (tmp_path / "e" / "index.html").read_text()
    assert sorted(_card_ids(page)) == sorted(ERRORS)
    assert len(_jpegs(tmp_path / "e")) == 1  # oom.jpg is readable; the others are missing
    assert "error: predict failed: out of memory" in page
    assert "image not shown: cannot read" in page


def test_an_unreadable_image_is_an_entry_with_its_reason(job, tmp_path):
    summary = _preview(job["images"], tmp_path / "p", task="detect", limit=100)
    (gone,) = [e for e in summary.entries if e.row.id == "gone.jpg"]
    assert gone.image is None
    assert gone.problem == f"image not shown: cannot read {job['uris']['gone.jpg']}: " \
                           f"No such file or directory"
    page = (tmp_path / "p" / "index.html").read_text()
    assert f'<div class="problem">{gone.problem}</div>' in page
    assert "shown without image</dt><dd>1 " in page


def test_video_frames_are_decoded_by_index(job, tmp_path):
    summary = _preview(job["video"], tmp_path / "v", limit=10)
    frames = {e.row.frame_index: e for e in summary.entries}
    assert sorted(frames) == sorted(VIDEO_FRAMES)
    for n in (0, 7, 23):
        pixels = np.asarray(Image.open(tmp_path / "v" / frames[n].image).convert("RGB"))
        assert pixels.shape == (HEIGHT, WIDTH, 3)
        assert level_index(pixels) == n  # the frame the row names, not a neighbour
    assert frames[99].image is None
    assert frames[99].problem == "image not shown: the video has no frame 99 now: it " \
                                 "changed since the job"
    page = (tmp_path / "v" / "index.html").read_text()
    assert "frame 7 at 0.700 s" in page

    errors = _preview(job["video"], tmp_path / "ve", errors=True)
    (broken,) = errors.entries
    assert broken.row.id == "broken.mp4" and broken.image is None
    assert "video's error row" in broken.problem


def test_bad_input_exits_2_with_the_reason(job, tmp_path, capsys):
    assert main(["preview", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "error: no job output at" in capsys.readouterr().err
    assert main(["preview", job["images"], "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "3 tasks in" in err and "choose one with --task" in err
    assert main(["preview", job["images"], "--out", str(tmp_path / "o"), "--task", "x"]) == 2
    assert "no task folder 'x'" in capsys.readouterr().err
    assert main(["preview", job["images"], "--out", str(tmp_path / "o"), "--task", "detect",
                 "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err

    broken = tmp_path / "broken"
    (broken / "detect").mkdir(parents=True)
    source = job["images"] + "/detect/part-00000.parquet"
    (broken / "detect" / "part-00000.parquet").write_bytes(open(source, "rb").read())
    (broken / "detect" / "part-00001.parquet").write_text("not parquet")
    assert main(["preview", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "not readable Parquet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written


def test_out_is_new_empty_or_an_earlier_preview_never_someone_elses_folder(job, tmp_path,
                                                                            capsys):
    """A folder with its own index.html and images/logo.jpg had both replaced and deleted."""
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (site / "index.html").write_text("<h1>my site</h1>")
    (site / "images" / "logo.jpg").write_bytes(b"\xff\xd8 my logo")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    for folder in (site, tmp_path / "notes"):
        assert main(["preview", job["images"], "--out", str(folder), "--task", "detect"]) == 2
        assert "is not empty and is no earlier preview" in capsys.readouterr().err
    assert (site / "index.html").read_text() == "<h1>my site</h1>"
    assert (site / "images" / "logo.jpg").read_bytes() == b"\xff\xd8 my logo"
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "empty"):  # an empty folder, then the preview written there
        assert main(["preview", job["images"], "--out", str(tmp_path / folder),
                     "--task", "detect"]) == 0
    assert (tmp_path / "empty" / "index.html").is_file()


def test_images_changed_after_the_job_are_entries_with_their_reason(tmp_path):
    """A file now truncated, emptied or of another size: each is an entry with its reason
    (the resized one is shown, without boxes, which would be misplaced), never a crash."""
    good = jpeg_bytes(synthetic_image(64, 48, seed=1))
    files = {"trunc.jpg": good[: len(good) // 3], "empty.png": b"",
             "resized.jpg": jpeg_bytes(synthetic_image(32, 24, seed=2))}
    records = []
    for id_, data in files.items():
        (tmp_path / id_).write_bytes(data)
        records.append(_record(id_, str(tmp_path / id_), "detect", (64, 48),
                               [("dog", 0.5, 4, 4, 40, 30)]))
    job_path = _write_job(tmp_path / "out", records, ["detect"], len(files))
    summary = _preview(job_path, tmp_path / "p")
    problems = {e.row.id: e.problem for e in summary.entries}
    from labeler.media.image import MediaError, decode_image

    with pytest.raises(MediaError) as decoding:  # the job's own reason for such a file
        decode_image(files["trunc.jpg"], 10**8, 1024)
    assert problems["trunc.jpg"] == f"image not shown: {decoding.value}"
    assert problems["empty.png"] == "image not shown: empty file (0 bytes)"
    assert problems["resized.jpg"] == ("the image is 32x24 now but was labeled at 64x48: it "
                                       "changed since the job, boxes not drawn")
    assert [p.name.split("-")[0] for p in _jpegs(tmp_path / "p")] == ["resized_jpg"]


def test_ids_file_shows_those_rows_in_its_order(job, tmp_path, capsys):
    """`--ids-file` (what `labeler eval --worst-ids` writes): the rows of those ids, in the
    file's order, not a sample; an id that is no row of the task is counted; with
    --errors, the error rows among them."""
    chosen = [GOOD_IDS[3], GOOD_IDS[0], "not-a-row.jpg", GOOD_IDS[3], "", GOOD_IDS[1]]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(chosen) + "\n")
    code = main(["preview", job["images"], "--out", str(tmp_path / "p"), "--task", "detect",
                 "--ids-file", str(ids_file)])
    out = capsys.readouterr().out
    assert code == 0
    assert (f"shown: 3 of the 4 ids of {ids_file}, from the {len(GOOD_IDS)} rows without an "
            f"error; 1 ids are no row of this task\n") in out
    html = (tmp_path / "p" / "index.html").read_text()
    assert _card_ids(html) == [GOOD_IDS[3], GOOD_IDS[0], GOOD_IDS[1]]
    assert f"those of the ids in {ids_file}, in its order" in html

    bad = list(ERRORS)[0]
    ids_file.write_text(f"{GOOD_IDS[0]}\n{bad}\n")
    errors = _preview(job["images"], tmp_path / "e", task="detect", errors=True,
                      ids_file=str(ids_file))
    assert [e.row.id for e in errors.entries] == [bad]

    ids_file.write_text("\n\n")
    assert main(["preview", job["images"], "--out", str(tmp_path / "q"), "--ids-file",
                 str(ids_file), "--task", "detect"]) == 2
    assert "holds no row id (one id a line)" in capsys.readouterr().err


def test_ids_file_that_cannot_be_read_exits_2(job, tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["preview", job["images"], "--out", str(tmp_path / "p"), "--task", "detect",
                 "--ids-file", str(missing)]) == 2
    assert f"--ids-file {str(missing)!r}: cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before anything is written
