"""`labeler eval`: a job output written by hand (the record schema) against a COCO file
written by hand -> AP, AP50 and the best-F1 thresholds worked out on paper, the same means
as pycocotools' own loadRes / summarize flow, image and label matching, and the errors that
name what is wrong. No Ray."""

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import labeler.export.rows
from labeler.cli import main
from labeler.config import SpecError
from labeler.evaluate import EvalError, EvalOptions, run_eval
from labeler.evaluate.ground_truth import ImageMatcher, load_ground_truth
from labeler.evaluate.metrics import RankedCurve
from labeler.schemas import RECORD_SCHEMA

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"},
              {"id": 3, "name": "Traffic  Light"}, {"id": 4, "name": "sheep"}]
IMAGES = [{"id": 1, "file_name": "photos/a.jpg", "width": 100, "height": 100},
          {"id": 2, "file_name": "photos/b.jpg", "width": 100, "height": 100},
          {"id": 3, "file_name": "c.jpg", "width": 100, "height": 100},  # row id sub/c.jpg
          {"id": 4, "file_name": "d.jpg", "width": 100, "height": 100},  # an error row
          {"id": 5, "file_name": "e.jpg", "width": 80, "height": 60}]  # row is 60x80
ANNOTATIONS = [  # bbox [x, y, w, h]
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30]},
    {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50]},
    {"id": 4, "image_id": 3, "category_id": 1, "bbox": [20, 20, 20, 20]},
    {"id": 5, "image_id": 4, "category_id": 1, "bbox": [0, 0, 10, 10]},
    {"id": 6, "image_id": 5, "category_id": 1, "bbox": [0, 0, 10, 10]},
]
# Rows: id -> (width, height, boxes (label, score, x0, y0, x1, y1)) or an error reason.
ROWS = {
    "photos/a.jpg": (100, 100, [("cat", 0.9, 10, 10, 50, 50),
                                # IoU with the dog 60,60,90,90: 27 * 30 / 990 = 0.818
                                ("dog", 0.8, 63, 60, 93, 90),
                                ("bird", 0.7, 0, 0, 5, 5)]),
    "photos/b.jpg": (100, 100, [("dog", 0.6, 0, 0, 50, 50), ("cat", 0.5, 0, 0, 10, 10)]),
    "sub/c.jpg": (100, 100, [("cat", 0.95, 60, 60, 90, 90), ("cat", 0.3, 20, 20, 40, 40)]),
    "d.jpg": "corrupt image data: truncated",
    "e.jpg": (60, 80, [("cat", 0.9, 0, 0, 10, 10)]),
    "z.jpg": (100, 100, [("cat", 0.9, 0, 0, 10, 10)]),  # not in the ground truth
}
PARAMETERS = {"labels": ["cat", "dog", "traffic light", "bird"], "threshold": 0.1,
              "label_thresholds": {"dog": 0.4}}

# By hand. cat, 2 boxes (a, c), ranked 0.95 F, 0.9 T, 0.5 F, 0.3 T at every IoU: precision
# 0, 1/2, 1/3, 1/2, recall 0, 1/2, 1/2, 1; interpolated precision 1/2 at every recall ->
# AP = AP50 = 0.5; best F1 keeping all four: 2 * 0.5 * 1 / 1.5.
# dog, 2 boxes (a, b): 0.8 (IoU 0.818) and 0.6 (exact) both match at IoU 0.50..0.80 (AP 1),
# at 0.85..0.95 only 0.6 does: precision 1/2 up to recall 1/2, 51 of 101 recall points ->
# AP = (7 + 3 * 51 * 0.5 / 101) / 10.
DOG_AP = (7 + 3 * 51 * 0.5 / 101) / 10
EXPECTED = {
    "cat": {"ground_truth": 2, "detections": 4, "ap": 0.5, "ap50": 0.5, "best_f1": 2 / 3,
            "best_threshold": 0.3, "best_precision": 0.5, "best_recall": 1.0},
    "dog": {"ground_truth": 2, "detections": 2, "ap": DOG_AP, "ap50": 1.0, "best_f1": 1.0,
            "best_threshold": 0.6, "best_precision": 1.0, "best_recall": 1.0},
    "Traffic  Light": {"ground_truth": 0, "detections": 0, "ap": None, "ap50": None,
                       "best_f1": None, "best_threshold": None, "best_precision": None,
                       "best_recall": None},
}


def _coco(tmp_path, **changes):
    path = tmp_path / ("gt.json" if not changes else "gt-changed.json")
    path.write_text(json.dumps({"images": IMAGES, "categories": CATEGORIES,
                                "annotations": ANNOTATIONS, **changes}))
    return str(path)


def _output(tmp_path, rows=ROWS, task="detect", name="animals", parameters=PARAMETERS,
            frames=False):
    root = tmp_path / "labels"
    (root / name).mkdir(parents=True)
    records = []
    for id_, row in rows.items():
        error = row if isinstance(row, str) else None
        width, height, boxes = (None, None, None) if error else row
        records.append({
            "id": id_, "uri": f"/in/{id_}", "width": width, "height": height, "task": task,
            "task_name": name, "model": "tiny/owlv2", "model_family": "owlv2",
            "parameters": json.dumps(parameters), "error": error,
            "frame_index": 0 if frames else None, "timestamp_s": 0.0 if frames else None,
            "detections": None if error else [
                {"label": label, "score": score, "x0": x0, "y0": y0, "x1": x1, "y1": y1}
                for label, score, x0, y0, x1, y1 in boxes]})
    half = len(records) // 2  # two files, read 2 rows at a time: figures add up across both
    for k, part in enumerate(p for p in (records[:half], records[half:]) if p):
        pq.write_table(pa.Table.from_pylist(part, schema=RECORD_SCHEMA),
                       root / name / f"part-{k:05d}.parquet")
    (root / "_SUCCESS").write_text("{}")
    return str(root)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(labeler.export.rows, "READ_BATCH_ROWS", 2)


def test_figures_match_the_hand_computed_ones(tmp_path):
    figures = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path))).figures
    got = {c["category"]: c for c in figures["categories"]}
    assert list(got) == ["cat", "dog", "Traffic  Light"]  # the ground truth's order
    for name, expected in EXPECTED.items():
        for key, value in expected.items():
            assert got[name][key] == (pytest.approx(value, abs=1e-6) if value else value), (name, key)
    assert got["Traffic  Light"]["labels"] == ["traffic light"]
    assert figures["mean"] == {"ap": pytest.approx((0.5 + DOG_AP) / 2),
                               "ap50": pytest.approx(0.75)}
    assert figures["images"] == {
        "ground_truth": 5, "evaluated": 3, "without_row": 1, "other_size": 1,
        "other_size_examples": ["e.jpg is 80x60, its row 60x80 (width and height swapped: "
                                "EXIF orientation applied on one side only)"]}
    # The rows read are those named like a ground-truth image (z.jpg is not).
    assert figures["rows"] == {"rows": 5, "error_rows": 1, "not_kept": 0}
    assert figures["labels_without_category"] == ["bird"]
    assert figures["categories_not_asked"] == ["sheep"]
    # cat: every box kept -> halfway to the job's threshold 0.1; dog: to its own 0.4.
    assert figures["label_thresholds"] == {"cat": 0.2, "dog": 0.5}
    # At those thresholds (all boxes kept) b and c each have a false cat; a is right; ties
    # by file name.
    assert figures["worst"] == [
        {"file_name": "c.jpg", "id": "sub/c.jpg", "kept": 2, "truth": 1, "false_boxes": 1,
         "missed": 0},
        {"file_name": "photos/b.jpg", "id": "photos/b.jpg", "kept": 2, "truth": 1,
         "false_boxes": 1, "missed": 0}]


def test_means_equal_pycocotools_own_flow(tmp_path):
    """The documented COCO evaluation: results file -> loadRes -> evaluate / accumulate /
    summarize; stats[0] and [1] are the mean AP and AP50 over categories with boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    figures = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path))).figures
    category = {"cat": 1, "dog": 2}
    results = [{"image_id": image_id, "category_id": category[label], "score": score,
                "bbox": [x0, y0, x1 - x0, y1 - y0]}
               for id_, image_id in (("photos/a.jpg", 1), ("photos/b.jpg", 2), ("sub/c.jpg", 3))
               for label, score, x0, y0, x1, y1 in ROWS[id_][2] if label in category]
    # The reference needs area and iscrowd, which eval fills in when a file lacks them.
    complete = [{**a, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0} for a in ANNOTATIONS]
    gt = COCO(_coco(tmp_path, annotations=complete))
    coco_eval = COCOeval(gt, gt.loadRes(results), iouType="bbox")
    coco_eval.params.imgIds = [1, 2, 3]
    coco_eval.params.catIds = [1, 2, 3]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert figures["mean"]["ap"] == pytest.approx(coco_eval.stats[0], abs=1e-12)
    assert figures["mean"]["ap50"] == pytest.approx(coco_eval.stats[1], abs=1e-12)


def test_iou_moves_the_best_threshold(tmp_path):
    """At IoU 0.85 the 0.8 dog misses: keeping both dogs gives P 1/2, R 1/2."""
    figures = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path), iou=0.85)).figures
    dog = next(c for c in figures["categories"] if c["category"] == "dog")
    assert (dog["best_f1"], dog["best_threshold"], dog["best_precision"], dog["best_recall"]) \
        == (pytest.approx(0.5), pytest.approx(0.6), 0.5, 0.5)
    assert dog["ap"] == pytest.approx(DOG_AP)  # AP does not depend on --iou
    # a's dog box now matches nothing, and a's dog goes unfound: a is the worst image.
    assert figures["worst"][0] == {"file_name": "photos/a.jpg", "id": "photos/a.jpg", "kept": 2,
                                   "truth": 2, "false_boxes": 1, "missed": 1}
    one = run_eval(EvalOptions(_output(tmp_path / "again"), _coco(tmp_path), iou=0.85, worst=1))
    assert [w["file_name"] for w in one.figures["worst"]] == ["photos/a.jpg"]
    assert one.lines()[-2:] == ["images with the most errors at those thresholds (--worst 1):",
                                "  photos/a.jpg: 1 false, 1 missed (2 boxes kept, 2 in truth)"]


def test_match_pairs_a_label_with_a_category_of_another_name(tmp_path):
    figures = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path),
                                   match={"bird": "sheep"})).figures
    got = {c["category"]: c for c in figures["categories"]}
    assert got["sheep"]["labels"] == ["bird"] and got["sheep"]["detections"] == 1
    assert got["sheep"]["ap"] is None  # no sheep on the evaluated images
    assert figures["labels_without_category"] == [] and figures["categories_not_asked"] == []


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", _output(tmp_path), "--coco", _coco(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images evaluated: 3 of 5; 1 without a labeled row\n  1 left out, their row has " \
        "another size: e.jpg is 80x60, its row 60x80" in printed
    assert "rows named like ground-truth images: 5, error rows among them: 1\n" in printed
    lines = printed.splitlines()
    header = next(k for k, line in enumerate(lines) if line.split()[:3] == ["category", "truth", "boxes"])
    assert lines[header + 1].split() == ["cat", "2", "4", "0.500", "0.500", "0.667", "0.300",
                                         "0.500", "1.000", "cat"]
    assert lines[header + 2].split() == ["dog", "2", "2", f"{DOG_AP:.3f}", "1.000", "1.000",
                                         "0.600", "1.000", "1.000", "dog"]
    assert lines[header + 3].split()[-6:] == ["-", "-", "-", "-", "traffic", "light"]
    assert "labels with no ground-truth category (their boxes are not evaluated): bird" in printed
    assert "ground-truth categories no label asks for (not evaluated): sheep" in printed
    assert '  label_thresholds: {"cat": 0.2, "dog": 0.5}' in printed
    assert json.loads(out.read_text())["label_thresholds"] == {"cat": 0.2, "dog": 0.5}


def test_a_coco_export_evaluated_against_itself_scores_one(tmp_path):
    """What `labeler export --format coco` writes is ground truth eval reads: file names are
    the row ids, so every box finds itself."""
    job = _output(tmp_path, rows={k: v for k, v in ROWS.items() if k != "e.jpg"})
    coco = tmp_path / "coco"
    assert main(["export", job, "--format", "coco", "--out", str(coco)]) == 0
    figures = run_eval(EvalOptions(job, str(coco / "annotations.json"))).figures
    assert figures["images"]["evaluated"] == 4  # a, b, c, z (d is an error row)
    got = {c["category"]: c for c in figures["categories"]}
    for name in ("cat", "dog", "bird"):
        assert (got[name]["ap"], got[name]["ap50"], got[name]["best_f1"]) \
            == (pytest.approx(1.0), pytest.approx(1.0), 1.0)
    assert got["traffic light"]["ground_truth"] == 0  # a label of the task, without a box


def test_pseudo_label_rows_not_kept_are_left_out_unless_asked(tmp_path):
    rows = {"photos/a.jpg": ROWS["photos/a.jpg"], "photos/b.jpg": ROWS["photos/b.jpg"]}
    job = _output(tmp_path, rows=rows, task="pseudo-label", name="pseudo")
    table = pq.read_table(f"{job}/pseudo/part-00001.parquet")  # photos/b.jpg: not kept
    table = table.set_column(table.schema.get_field_index("kept"), "kept",
                             pa.array([False], pa.bool_()))
    pq.write_table(table, f"{job}/pseudo/part-00001.parquet")
    left_out = run_eval(EvalOptions(job, _coco(tmp_path))).figures
    assert left_out["rows"]["not_kept"] == 1 and left_out["images"]["evaluated"] == 1
    both = run_eval(EvalOptions(job, _coco(tmp_path), include_not_kept=True)).figures
    assert both["images"]["evaluated"] == 2


def test_image_matcher_exact_then_unique_base_names():
    images = {1: {"file_name": "a/x.jpg"}, 2: {"file_name": "./b/y.jpg"},
              3: {"file_name": "c/z.jpg"}, 4: {"file_name": "d/z.jpg"}, 5: {"file_name": "w.jpg"}}
    matcher = ImageMatcher(images)
    seen = {row: matcher.see(row) for row in
            ("a/x.jpg", "b/y.jpg", "q/x.jpg", "z.jpg", "e/w.jpg", "f/w.jpg", "nope.jpg")}
    # x.jpg is taken exactly; z.jpg names two images; w.jpg comes from two rows.
    assert seen == {"a/x.jpg": True, "b/y.jpg": True, "q/x.jpg": True, "z.jpg": False,
                    "e/w.jpg": True, "f/w.jpg": True, "nope.jpg": False}
    assert matcher.resolve() == {"a/x.jpg": 1, "b/y.jpg": 2}


def test_best_threshold_cuts_only_between_different_scores():
    """Two boxes tie at 0.5 (one right, one wrong): a threshold keeps both or neither."""
    curve = RankedCurve(np.array([0.9, 0.5, 0.5, 0.2]), np.array([True, True, False, True]), 3)
    best = curve.best_f1()
    # keep 1: P 1, R 1/3 (F1 0.5); keep 3: P 2/3, R 2/3 (0.667); keep 4: P 3/4, R 1 (0.857)
    assert best == {"best_f1": pytest.approx(6 / 7), "best_threshold": 0.2,
                    "best_precision": 0.75, "best_recall": 1.0, "next_score": None}
    curve = RankedCurve(np.array([0.9, 0.5, 0.5, 0.2]), np.array([True, True, False, False]), 2)
    assert curve.best_f1()["best_threshold"] == 0.5  # 2/3 & 1 (0.8) beats 1/2 & 1 at 0.2
    assert curve.best_f1()["next_score"] == 0.2


def test_best_threshold_of_equal_f1s_is_the_highest():
    """Keeping the 5 boxes scoring 1 (1 right) or all 16 (2 right) of 6 to find: F1 2/11
    both, though 2PR / (P + R) rounds the second 1 ulp higher; the highest threshold keeps
    fewer boxes for the same F1."""
    scores = np.concatenate([np.ones(5), np.linspace(0.9, 0.25, 11)])
    tp = np.zeros(16, dtype=bool)
    tp[[0, 15]] = True
    best = RankedCurve(scores, tp, 6).best_f1()
    assert best["best_threshold"] == 1.0 and best["next_score"] == 0.9
    assert (best["best_f1"], best["best_precision"], best["best_recall"]) == (2 / 11, 1 / 5,
                                                                               1 / 6)


@pytest.mark.parametrize("changes, message", [
    ({"images": "x"}, "`images` is missing or not a list"),
    ({"images": [{"id": 1}]}, "images[0].file_name is missing or not a string"),
    ({"categories": [{"id": True, "name": "cat"}]}, "categories[0].id is missing or not an integer"),
    ({"annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]},
     "annotations[0].bbox must be [x, y, width, height]"),
    ({"annotations": [{"image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]}]},
     "annotations[0].image_id 9 is not an image's id"),
    ({"categories": CATEGORIES + [{"id": 9, "name": "CAT"}]}, "two categories are named 'CAT'"),
])
def test_bad_ground_truth_is_named(tmp_path, changes, message):
    with pytest.raises(EvalError, match=re.escape(message)):
        run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path, **changes)))


@pytest.mark.parametrize("options, message", [
    ({"iou": 0.45}, "--iou 0.45: one of COCO's IoU thresholds 0.5, 0.55"),
    ({"worst": -1}, "--worst -1: the number of images listed, 0 or more"),
    ({"match": {"horse": "cat"}}, "--match horse=cat: the task has no label 'horse'"),
    ({"match": {"bird": "owl"}}, "--match bird=owl: no ground-truth category 'owl'"),
    ({"coco": "missing.json"}, "no such file"),
    ({"json": "/nonexistent/dir/x.json"}, "--json '/nonexistent/dir/x.json': a file to write"),
    ({"worst_ids": "/nonexistent/w.txt"}, "--worst-ids '/nonexistent/w.txt': a file to write"),
])
def test_bad_options_are_named(tmp_path, options, message):
    coco = options.pop("coco", None)
    coco = str(tmp_path / coco) if coco else _coco(tmp_path)
    with pytest.raises(EvalError, match=re.escape(message)):
        run_eval(EvalOptions(_output(tmp_path), coco, **options))


def test_no_matching_image_says_how_images_are_matched(tmp_path, capsys):
    job = _output(tmp_path, rows={"other/q.jpg": ROWS["photos/a.jpg"]})
    assert main(["eval", job, "--coco", _coco(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no ground-truth image is a labeled row of this task" in err
    assert "'photos/a.jpg'" in err and "['other/q.jpg']" in err


def test_no_label_of_the_task_being_a_category_is_an_error(tmp_path):
    job = _output(tmp_path, parameters={"labels": ["bird"]},
                  rows={"photos/a.jpg": (100, 100, [("bird", 0.7, 0, 0, 5, 5)])})
    with pytest.raises(EvalError, match=re.escape(
            "no label of task 'animals' is a ground-truth category: labels bird; categories "
            "cat, dog, Traffic  Light, sheep (pair them with --match LABEL=CATEGORY)")):
        run_eval(EvalOptions(job, _coco(tmp_path)))


def test_text_and_video_tasks_are_refused(tmp_path):
    job = _output(tmp_path, task="caption", name="captions")
    with pytest.raises(SpecError, match="is a caption task: its rows carry no boxes"):
        run_eval(EvalOptions(job, _coco(tmp_path), task="captions"))
    job = _output(tmp_path / "video", frames=True)
    with pytest.raises(EvalError, match="holds video frame rows: eval compares image rows"):
        run_eval(EvalOptions(job, _coco(tmp_path)))


def test_ground_truth_json_is_checked_before_the_output(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EvalError, match="is not JSON"):
        run_eval(EvalOptions(str(tmp_path / "nowhere"), str(tmp_path / "bad.json")))
    assert load_ground_truth(_coco(tmp_path)).names[3] == "Traffic  Light"


def test_worst_ids_feed_preview(tmp_path, capsys):
    """`eval --worst-ids` writes the worst images' row ids, worst first; `preview
    --ids-file` draws those rows in that order."""
    job, ids = _output(tmp_path), tmp_path / "worst.txt"
    assert main(["eval", job, "--coco", _coco(tmp_path), "--iou", "0.85",
                 "--worst-ids", str(ids)]) == 0
    assert ids.read_text() == "photos/a.jpg\nsub/c.jpg\nphotos/b.jpg\n"
    capsys.readouterr()
    assert main(["preview", job, "--out", str(tmp_path / "p"), "--ids-file", str(ids)]) == 0
    assert f"shown: 3 of the 3 ids of {ids}, from the 5 rows without an error\n" \
        in capsys.readouterr().out
    html = (tmp_path / "p" / "index.html").read_text()
    shown = re.findall(r'<div class="id">(.*?)</div>', html)
    assert shown == ["photos/a.jpg", "sub/c.jpg", "photos/b.jpg"]


def _yolo(tmp_path, names=("cat", "dog", "Traffic  Light", "sheep"), labels=None):
    """ANNOTATIONS of images a, b, c and d (all 100x100) as a YOLO dataset: data.yaml with
    `names`, labels/<file name less suffix>.txt with `class cx cy w h` in [0, 1]."""
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": list(names)}))
    if labels is None:
        labels = {}
        for image in IMAGES[:4]:
            stem = image["file_name"].rsplit(".", 1)[0]
            labels[stem] = "".join(
                f"{a['category_id'] - 1} {(x + w / 2) / 100} {(y + h / 2) / 100} {w / 100} "
                f"{h / 100}\n"
                for a in ANNOTATIONS if a["image_id"] == image["id"]
                for x, y, w, h in [a["bbox"]])
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_text(text)
    return str(root)


def test_yolo_ground_truth_gives_the_coco_figures(tmp_path, capsys):
    """The same boxes as YOLO labels (no sizes: the rows give them) -> the same figures as
    the COCO file, which left e.jpg out for its size. Label file paths match row ids less
    their suffix (photos/a -> photos/a.jpg), c by its unique base name (sub/c.jpg)."""
    coco = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path))).figures
    truth = _yolo(tmp_path)
    assert main(["eval", _output(tmp_path / "y"), "--yolo", truth,
                 "--json", str(tmp_path / "y.json")]) == 0
    assert f"ground truth: {truth} (yolo): 4 images, 4 categories" in capsys.readouterr().out
    yolo = json.loads((tmp_path / "y.json").read_text())
    assert yolo["images"] == {"ground_truth": 4, "evaluated": 3, "without_row": 1,
                              "other_size": 0, "other_size_examples": []}
    assert yolo["mean"] == pytest.approx(coco["mean"])
    for key in ("label_thresholds", "labels_without_category", "categories_not_asked"):
        assert yolo[key] == coco[key], key
    # An image's name is its label file's path less .txt.
    assert [w.pop("file_name") for w in yolo["worst"]] == ["c", "photos/b"]
    assert yolo["worst"] == [{k: v for k, v in w.items() if k != "file_name"}
                             for w in coco["worst"]]
    for got, expected in zip(yolo["categories"], coco["categories"]):
        assert got == {k: pytest.approx(v) if isinstance(v, float) else v
                       for k, v in expected.items()}


@pytest.mark.parametrize("change, message", [
    ({"names": ()}, "data.yaml needs `names`"),
    ({"labels": {"photos/a": "0 0.5 0.5 0.2\n"}}, "labels/photos/a.txt line 1: expected "
                                                   "`class cx cy w h`"),
    ({"labels": {"photos/a": "\n7 0.5 0.5 0.2 0.2\n"}}, "labels/photos/a.txt line 2: class 7 "
                                                       "is not in data.yaml's names (0..3)"),
    ({"labels": {"photos/a": "0 0.1 0.1 0.2 0.2 0.3 0.3\n"}}, "(a box, not a polygon)"),
    ({"labels": {"photos/a": "0 50 50 20 20\n"}}, "cx cy w h must be in [0, 1]"),
    ({"labels": {}}, "no label files in a labels/ folder"),
])
def test_bad_yolo_ground_truth_is_named(tmp_path, change, message):
    with pytest.raises(EvalError, match=re.escape(message)):
        run_eval(EvalOptions(_output(tmp_path), yolo=_yolo(tmp_path, **change)))


def test_exactly_one_ground_truth(tmp_path):
    job = _output(tmp_path)
    with pytest.raises(EvalError, match="one of --coco FILE .* or --yolo DIR"):
        run_eval(EvalOptions(job))
    with pytest.raises(EvalError, match="one of --coco FILE"):
        run_eval(EvalOptions(job, _coco(tmp_path), yolo=_yolo(tmp_path)))


def test_yolo_folder_without_class_names_is_named(tmp_path):
    truth = Path(_yolo(tmp_path))
    (truth / "data.yaml").write_text("names: [cat\n")  # unclosed flow list
    with pytest.raises(EvalError, match=re.escape("data.yaml is not YAML")):
        run_eval(EvalOptions(_output(tmp_path), yolo=str(truth)))
    (truth / "data.yaml").unlink()
    with pytest.raises(EvalError, match=re.escape("no data.yaml or dataset.yaml (a YOLO "
                                                  "dataset's class names)")):
        run_eval(EvalOptions(_output(tmp_path / "again"), yolo=str(truth)))


def test_categories_listed_out_of_id_order_keep_their_own_figures(tmp_path):
    """COCOeval sorts category ids: a file listing dog (2) before cat (1) must still give
    each category its own AP, as it does listed in order."""
    in_order = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path))).figures
    shuffled = run_eval(EvalOptions(_output(tmp_path / "s"), _coco(
        tmp_path, categories=CATEGORIES[::-1]))).figures
    assert [c["category"] for c in shuffled["categories"]] == ["Traffic  Light", "dog", "cat"]
    by_name = {c["category"]: c for c in in_order["categories"]}
    for got in shuffled["categories"]:
        assert got == by_name[got["category"]]
    assert shuffled["categories"][2]["ap"] == pytest.approx(0.5)
    assert shuffled["categories"][1]["ap"] == pytest.approx(DOG_AP)


@pytest.mark.parametrize("ids", [[0, 1, 2, 3, 4, 5], ["a", "b", "c", "d", "e", "f"],
                                 [7, 7, 7, 7, 7, 7]])
def test_annotation_ids_from_zero_strings_or_repeated_change_nothing(tmp_path, ids):
    """pycocotools reads a matched ground-truth id of 0 as "no match": annotations are
    numbered afresh, so files numbering from 0 (common) score as the same boxes with ids
    from 1."""
    expected = run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path))).figures
    annotations = [{**a, "id": i} for a, i in zip(ANNOTATIONS, ids)]
    got = run_eval(EvalOptions(_output(tmp_path / "z"),
                               _coco(tmp_path, annotations=annotations))).figures
    for key in ("categories", "mean", "label_thresholds", "worst"):
        assert got[key] == expected[key], key


@pytest.mark.parametrize("field, value, message", [
    ("iscrowd", None, "annotations[0].iscrowd must be 0 or 1, got None"),
    ("iscrowd", "no", "annotations[0].iscrowd must be 0 or 1, got 'no'"),
    ("area", None, "annotations[0].area must be a number of square pixels, 0 or more, got None"),
    ("area", "1600", "annotations[0].area must be a number of square pixels"),
    ("bbox", [10, 10, -40, 40], "annotations[0].bbox must be [x, y, width, height] in pixels "
                                "(finite numbers, width and height 0 or more), got [10, 10, -40"),
    ("bbox", [float("nan"), 10, 40, 40], "annotations[0].bbox must be"),
    ("bbox", [10, "10", 40, 40], "annotations[0].bbox must be"),
])
def test_bad_annotation_fields_are_named(tmp_path, field, value, message):
    annotations = [{**ANNOTATIONS[0], field: value}, *ANNOTATIONS[1:]]
    with pytest.raises(EvalError, match=re.escape(message)):
        run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path, annotations=annotations)))


@pytest.mark.parametrize("value", ["100", 100.5, 0, True])
def test_an_image_size_that_is_not_a_pixel_count_is_named(tmp_path, value):
    images = [{**IMAGES[0], "width": value}, *IMAGES[1:]]
    with pytest.raises(EvalError, match=re.escape(
            f"images[0].width must be a whole number of pixels, got {value!r}")):
        run_eval(EvalOptions(_output(tmp_path), _coco(tmp_path, images=images)))


def test_only_error_rows_or_other_sizes_matched_is_an_error(tmp_path, capsys):
    """Rows named like ground-truth images, none of them a labeled row of the image's size:
    nothing to evaluate, said as such (not an empty table and exit 0)."""
    job = _output(tmp_path, rows={"d.jpg": ROWS["d.jpg"], "e.jpg": ROWS["e.jpg"]})
    assert main(["eval", job, "--coco", _coco(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert ("no ground-truth image is a labeled row of this task of the same size: 2 images "
            "are named by rows; 1 of those rows are error rows or pseudo-label rows not kept, "
            "1 have another size (e.jpg is 80x60, its row 60x80") in err


def test_yolo_images_without_a_label_file_are_background_images(tmp_path):
    """Ultralytics and Roboflow write no label file for an image without objects: such an
    image under images/ is ground truth with no boxes, so a box on it is a false one."""
    truth = Path(_yolo(tmp_path))
    for name in ("photos/a.jpg", "photos/b.jpg", "c.jpg", "d.jpg", "z.jpg", "z.png",
                 "notes.txt"):
        (truth / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (truth / "images" / name).write_bytes(b"")
    rows = {**ROWS, "z.jpg": (100, 100, [("cat", 0.92, 0, 0, 10, 10)])}
    figures = run_eval(EvalOptions(_output(tmp_path, rows=rows), yolo=str(truth))).figures
    assert figures["images"]["ground_truth"] == 5  # a, b, c, d and z (z.jpg and z.png: one)
    assert figures["images"]["evaluated"] == 4
    cat = figures["categories"][0]
    # z.jpg's cat is now a false box ranked second: 0.95 F, 0.92 F, 0.9 T, 0.5 F, 0.3 T:
    # precision 1/3 at recall 1/2, 2/5 at recall 1 -> interpolated 2/5 everywhere (without
    # z: 0.5), and the best F1 keeps all five: 2 * 0.4 * 1 / 1.4.
    assert cat["detections"] == 5
    assert cat["ap"] == pytest.approx(0.4)
    assert cat["best_f1"] == pytest.approx(0.8 / 1.4)
    # Only background images under images/ (no labels/ at all) are a ground truth too.
    bare = tmp_path / "bare"
    (bare / "images").mkdir(parents=True)
    (bare / "data.yaml").write_text(yaml.safe_dump({"names": ["cat"]}))
    (bare / "images" / "z.jpg").write_bytes(b"")
    figures = run_eval(EvalOptions(_output(tmp_path / "b"), yolo=str(bare))).figures
    assert figures["images"] == {"ground_truth": 1, "evaluated": 1, "without_row": 0,
                                 "other_size": 0, "other_size_examples": []}
    assert figures["categories"][0]["ground_truth"] == 0


def test_yolo_splits_as_roboflow_lays_them_out_give_the_same_figures(tmp_path):
    """Roboflow's YOLO export: data.yaml beside train/labels/, valid/labels/ (and images/),
    not one labels/ folder; a label file's name drops its labels folder (train/labels/x.txt
    is train/x) and images in an images folder without one are background images."""
    truth = Path(_yolo(tmp_path))
    (truth / "images" / "z.jpg").parent.mkdir()
    (truth / "images" / "z.jpg").write_bytes(b"")
    rows = {**ROWS, "z.jpg": (100, 100, [("cat", 0.92, 0, 0, 10, 10)])}
    flat = run_eval(EvalOptions(_output(tmp_path, rows=rows), yolo=str(truth))).figures
    roboflow = tmp_path / "roboflow"
    (roboflow / "valid" / "images").mkdir(parents=True)
    (roboflow / "data.yaml").write_text((truth / "data.yaml").read_text())
    (roboflow / "README.roboflow.txt").write_text("Exported via roboflow.com\n")
    for label in (truth / "labels").rglob("*.txt"):
        split = "train" if label.parent.name == "photos" else "valid"
        moved = roboflow / split / "labels" / label.relative_to(truth / "labels")
        moved.parent.mkdir(parents=True, exist_ok=True)
        moved.write_text(label.read_text())
    (roboflow / "valid" / "images" / "z.jpg").write_bytes(b"")
    split = run_eval(EvalOptions(_output(tmp_path / "r", rows=rows), yolo=str(roboflow))).figures
    assert split["images"] == flat["images"]
    assert split["images"]["ground_truth"] == 5  # a, b, c, d and the background image z
    assert split["categories"] == flat["categories"]
    assert sorted(w["file_name"] for w in split["worst"]) == \
        sorted("valid/z" if w["file_name"] == "z" else
               f"train/{w['file_name']}" if "/" in w["file_name"] else f"valid/{w['file_name']}"
               for w in flat["worst"])
