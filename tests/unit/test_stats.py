"""`labeler stats`: a job output written by hand as Parquet with the record schema (a detect
task over two files, a caption task, a task with too many labels), read by the real reader
in batches of 3 rows -> the exact figures, printed and in the JSON file. No Ray."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import labeler.export.rows
import labeler.stats.compute
from labeler.cli import main
from labeler.schemas import RECORD_SCHEMA
from labeler.stats import StatsOptions, StatsSummary, run_stats

EMPTY = "empty file (0 bytes)"
NOT_IMAGE = "not a recognised image format"
# detect task "animals": id -> boxes (label, score) or an error reason; "" is `object`.
ANIMALS = [
    ("a.jpg", [("dog", 0.9), ("dog", 0.6), ("cat", 0.35)]),
    ("b.jpg", [("dog", 0.55), ("", 0.15)]),
    ("c.jpg", []),
    ("d.jpg", EMPTY),
    ("e.jpg", EMPTY),  # part-00001 from here
    ("f.jpg", NOT_IMAGE),
    ("g.jpg", [("cat", 0.75), ("cat", 0.7), ("bird", 0.05)]),
    ("h.jpg", [("dog", 0.25)]),
]
# caption task: id -> text, or an error reason.
CAPTIONS = [("a.jpg", "a dog on a sofa"), ("b.jpg", ""), ("c.jpg", "   "), ("d.jpg", EMPTY),
            ("e.jpg", "un café"), ("f.jpg", None)]
# label -> [boxes, images, >=0.1, >=0.3, >=0.5, >=0.7, median], by hand from ANIMALS; a
# median is the middle of the 0.01 bin of the lower median (dog: 0.55, cat: 0.7).
LABELS = {"dog": [4, 3, 4, 3, 3, 1, 0.555], "cat": [3, 2, 3, 3, 2, 2, 0.705],
          "bird": [1, 1, 0, 0, 0, 0, 0.055], "object": [1, 1, 1, 0, 0, 0, 0.155]}
TABLE = """\
task: animals (detect), model: owlv2 tiny/owlv2
  rows: 8, error rows: 3
    x2: empty file (0 bytes)
    x1: not a recognised image format
  rows with boxes: 4 of 5 rows without error; boxes: 9; labels: 4
  label     boxes   images    >=0.1    >=0.3    >=0.5    >=0.7  median
  dog           4        3        4        3        3        1   0.555
  cat           3        2        3        3        2        2   0.705
  bird          1        1        0        0        0        0   0.055
  object        1        1        1        0        0        0   0.155
task: caption (caption), model: florence2 tiny/florence2@abc123
  rows: 6, error rows: 1
    x1: empty file (0 bytes)
  text: 3 empty of 5 rows without error; length in characters: mean 11.0, max 15
"""


def _record(task, name, id_, boxes=None, text=None, model=("tiny/owlv2", "owlv2", None)):
    error = boxes if isinstance(boxes, str) else None
    detections = None if error or boxes is None else [
        {"label": label, "score": score, "x0": 1, "y0": 2, "x1": 30, "y1": 40}
        for label, score in boxes]
    return {"id": id_, "uri": f"/in/{id_}", "width": None if error else 64,
            "height": None if error else 48, "task": task, "task_name": name, "model": model[0],
            "model_family": model[1], "model_revision": model[2],
            "parameters": json.dumps({"labels": ["dog", "cat"]}), "detections": detections,
            "text": text, "error": error}


def _write(root, name, parts, success=True):
    (root / name).mkdir(parents=True)
    for k, records in enumerate(parts):
        pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA),
                       root / name / f"part-{k:05d}.parquet")
    if success:
        (root / "_SUCCESS").write_text("{}")


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """Read 3 rows at a time, so figures add up across batches and files."""
    monkeypatch.setattr(labeler.export.rows, "READ_BATCH_ROWS", 3)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats") / "out"
    animals = [_record("detect", "animals", id_, boxes) for id_, boxes in ANIMALS]
    _write(root, "animals", [animals[:4], animals[4:]])
    model = ("tiny/florence2", "florence2", "abc123")
    captions = [_record("caption", "caption", id_, EMPTY, model=model) if text == EMPTY else
                _record("caption", "caption", id_, text=text, model=model)
                for id_, text in CAPTIONS]
    _write(root, "caption", [captions])
    return str(root)


def _stats(capsys, *args):
    code = main(["stats", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_figures_of_every_task_printed(job, capsys):
    code, out, _ = _stats(capsys, job)
    assert code == 0
    assert out == f"output: {job}\n{TABLE}"


def test_json_holds_the_printed_figures(job, tmp_path, capsys):
    path = tmp_path / "stats.json"
    code, out, _ = _stats(capsys, job, "--json", str(path))
    assert code == 0
    figures = json.loads(path.read_text(encoding="utf-8"))
    assert out == "\n".join(StatsSummary(figures).lines()) + "\n"  # the table, from the file
    animals, caption = figures["tasks"]
    assert (figures["output"], figures["finished"], figures["scores"]) == (
        job, True, [0.1, 0.3, 0.5, 0.7])
    assert (animals["name"], animals["kind"], animals["rows"], animals["error_rows"]) == (
        "animals", "detect", 8, 3)
    assert animals["errors"] == [{"reason": EMPTY, "rows": 2}, {"reason": NOT_IMAGE, "rows": 1}]
    boxes = animals["boxes"]
    assert (boxes["rows_with_boxes"], boxes["boxes"], boxes["labels"], boxes["labels_not_shown"],
            boxes["max_undercount"]) == (4, 9, 4, 0, 0)
    assert [b["label"] for b in boxes["per_label"]] == list(LABELS)
    for b in boxes["per_label"]:
        assert [b["boxes"], b["images"], *b["at_score"].values(), b["median_score"]] == (
            LABELS[b["label"]]), b["label"]
        assert list(b["at_score"]) == ["0.1", "0.3", "0.5", "0.7"]
    assert caption["model"] == {"model": "tiny/florence2", "model_family": "florence2",
                                "model_revision": "abc123"}
    assert caption["text"] == {"empty": 3, "mean_chars": 11.0, "max_chars": 15}
    assert "boxes" not in caption


def test_task_scores_and_top(job, capsys):
    code, out, _ = _stats(capsys, job, "--task", "animals", "--scores", "0.5,0.74",
                          "--top", "2")
    assert code == 0
    assert "caption" not in out
    assert out.splitlines()[-5:] == [
        "  rows with boxes: 4 of 5 rows without error; boxes: 9; labels: 4",
        "  label    boxes   images    >=0.5   >=0.74  median",
        "  dog          4        3        3        1   0.555",
        "  cat          3        2        2        1   0.705",
        "  ... 2 more labels (--top 2)"]
    summary = run_stats(StatsOptions(job, task="caption", top=0))
    assert [t["name"] for t in summary.figures["tasks"]] == ["caption"]


def test_bad_input_exits_2(job, tmp_path, capsys):
    code, out, err = _stats(capsys, str(tmp_path / "nothing"))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: no job output at {str(tmp_path / 'nothing')!r}")
    code, out, err = _stats(capsys, job, "--task", "nope")
    assert (code, out) == (2, "")
    assert err == (f"error: no task folder 'nope' in {job!r} (it holds: animals (detect), "
                   f"caption (caption))\n")
    code, _, err = _stats(capsys, job, "--scores", "0.5,1.5")
    assert code == 2 and err.startswith("error: --scores 0.5,1.5: box scores in [0, 1]")
    code, _, err = _stats(capsys, job, "--json", str(tmp_path / "no" / "such" / "f.json"))
    assert code == 2 and "--json" in err
    for scores in (",", "", "0.5,high"):  # the value given is shown
        with pytest.raises(SystemExit) as exit_:
            _stats(capsys, job, "--scores", scores)
        assert exit_.value.code == 2
        assert (f"error: argument --scores: {scores!r}: comma-separated box scores, e.g. "
                f"0.1,0.3,0.5,0.7\n") in capsys.readouterr().err


def test_labels_stay_bounded_and_the_undercount_is_printed(tmp_path, monkeypatch, capsys):
    """Capacity 2: at most 4 labels are held; dog (20 boxes among 30 one-box labels) stays,
    its count short by at most the printed undercount."""
    monkeypatch.setattr(labeler.stats.compute, "MAX_LABELS", 2)
    rows = [_record("pseudo-label", "pseudo", f"{i}.jpg", [("dog", 0.8), (f"n-gram {i}", 0.4)])
            for i in range(20)]
    rows += [_record("pseudo-label", "pseudo", f"x{i}.jpg", [(f"rare {i}", 0.2)])
             for i in range(10)]
    _write(tmp_path, "pseudo", [rows], success=False)
    summary = run_stats(StatsOptions(str(tmp_path), top=1))
    boxes = summary.figures["tasks"][0]["boxes"]
    short = boxes["max_undercount"]
    assert boxes["boxes"] == 50
    assert 0 < short <= 50 // (2 + 1)  # Misra-Gries: at most boxes / (capacity + 1)
    assert boxes["labels"] <= 2 * 2
    (dog,) = boxes["per_label"]
    assert dog["label"] == "dog"
    assert 20 - short <= dog["boxes"] <= 20 and dog["at_score"]["0.7"] == dog["boxes"]
    lines = summary.lines()
    assert lines[1] == ("warning: no _SUCCESS: the job did not finish, these are the figures "
                        "of its committed shards")
    assert lines[-1] == (f"  too many labels to count exactly: each label's counts may be "
                         f"short by at most {short} boxes")
    assert f"  ... {boxes['labels'] - 1} more labels (--top 1)" in lines


def test_a_task_whose_first_files_hold_no_row_is_read(tmp_path, capsys):
    """A task's kind and model are its first row's: in a later file when the first ones are
    empty, from _job.json's identity when every file is."""
    root = tmp_path / "out"
    animals = [_record("detect", "animals", id_, boxes) for id_, boxes in ANIMALS]
    _write(root, "animals", [[], animals[:4], [], animals[4:]])
    _write(root, "quiet", [[], []])
    (root / "_job.json").write_text(json.dumps({
        "tasks": ["animals", "quiet"], "identity": {"tasks": [{"task": "detect"},
                                                              {"task": "caption"}]}}))
    code, out, err = _stats(capsys, str(root))
    assert code == 0, err
    assert out == f"output: {root}\n" + TABLE.split("task: caption")[0] + (
        "task: quiet (caption), model: None None\n"
        "  rows: 0, error rows: 0\n"
        "  text: 0 empty of 0 rows without error; length in characters: mean -, max 0\n")


def test_a_reader_that_stops_reading_ends_the_command_quietly(job):
    """labeler stats ... | head: the pipe closed before the table is written (or flushed at
    exit) is no traceback."""
    command = subprocess.Popen([sys.executable, "-m", "labeler.cli", "stats", job],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    command.stdout.close()  # before the command, still starting, writes anything
    err = command.stderr.read().decode()
    assert (command.wait(), err) == (1, "")
