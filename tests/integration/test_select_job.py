"""`labeler select` on a real job's output (two tiny OWLv2 detect tasks): the ids of the rows
most worth a review, best first, by one task's uncertainty or by the tasks' disagreement;
`labeler export --ids-file` and `labeler preview --ids-file` take that selection; bad
options are refused before anything is read or written."""

from __future__ import annotations

import json
import shutil

import pytest

from labeler.cli import main
from labeler.selection.scores import disagreement


def _select(capsys, *args) -> tuple[int, str, str]:
    code = main(["select", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_by_uncertainty_the_rows_whose_boxes_score_lowest(two_task_job, tmp_path, capsys):
    job, tasks = two_task_job
    rows = tasks["owl_a"]
    scores = {i: [d["score"] for d in r["detections"]] for i, r in rows.items()
              if r["error"] is None}
    expected = sorted(((1 - sum(s) / len(s) if s else 0.0, i) for i, s in scores.items()),
                      key=lambda e: (-e[0], e[1]))[:4]
    ids, report = tmp_path / "ids.txt", tmp_path / "selection.json"
    code, out, _ = _select(capsys, job, "--task", "owl_a", "--limit", 4, "--ids-file", ids,
                           "--json", report)
    assert code == 0
    assert ids.read_text().splitlines() == [i for _, i in expected]
    selected = json.loads(report.read_text())
    assert (selected["by"], selected["tasks"], selected["rows"], selected["error_rows"],
            selected["inputs"]) == ("uncertainty", ["owl_a"], 9, 3, 6)
    assert [s["score"] for s in selected["selected"]] == pytest.approx([e for e, _ in expected])
    assert out.splitlines()[:2] == ["by uncertainty over owl_a: 9 rows, 6 inputs scored, 3 "
                                    "error rows skipped", "selected: 4 (--limit 4)"]
    best = selected["selected"][0]
    assert f"  {best['score']:.3f}  {best['id']}  {best['reason']}" in out

    # The selection is what export takes: a Label Studio project of those images only.
    (tmp_path / "ids_more.txt").write_text(ids.read_text() + "not-a-row.jpg\n")
    assert main(["export", job, "--task", "owl_a", "--format", "label-studio", "--out",
                 str(tmp_path / "ls"), "--ids-file", str(tmp_path / "ids_more.txt")]) == 0
    out = capsys.readouterr().out
    assert (f"only the ids of {tmp_path / 'ids_more.txt'}: 4 of its 5 are rows of this task "
            f"(1 are not)") in out
    exported = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert len(exported) == 4
    boxes = sum(len(rows[i]["detections"]) for _, i in expected)
    assert sum(len(t["predictions"][0]["result"]) for t in exported) == boxes
    # ... and preview draws them, in that order.
    assert main(["preview", job, "--task", "owl_a", "--ids-file", str(ids),
                 "--out", str(tmp_path / "preview")]) == 0
    assert "shown: 4 of the 4 ids of" in capsys.readouterr().out


def test_by_disagreement_the_rows_with_an_object_only_some_tasks_found(two_task_job, tmp_path,
                                                                       capsys):
    job, tasks = two_task_job
    a, b = tasks["owl_a"], tasks["owl_b"]
    scores = {i: disagreement([a[i]["detections"], b[i]["detections"]], a[i]["width"],
                              a[i]["height"], ["owl_a", "owl_b"], 0.6)
              for i in a if a[i]["error"] is None}
    expected = sorted(scores, key=lambda i: (-scores[i].score, i))
    assert scores[expected[0]].score > 0  # the tasks ask differently: they disagree somewhere
    ids = tmp_path / "ids.txt"
    code, out, _ = _select(capsys, job, "--tasks", "owl_a,owl_b", "--iou", 0.6,
                           "--ids-file", ids)
    assert code == 0
    assert ids.read_text().splitlines() == expected  # --limit 100: all 6 inputs
    assert out.splitlines()[0] == ("by disagreement over owl_a, owl_b: 9 rows, 6 inputs "
                                   "scored, 3 error rows skipped")
    top = scores[expected[0]]
    assert f"  {top.score:.3f}  {expected[0]}  {top.reason}" in out

    # The tasks may come from separate job outputs (one task each), as labeler fuse takes them.
    shutil.copytree(f"{job}/owl_b", tmp_path / "b" / "owl_b")
    code, out, _ = _select(capsys, job, tmp_path / "b", "--tasks", "owl_a,owl_b", "--iou", 0.6,
                           "--ids-file", tmp_path / "ids_two.txt")
    assert code == 0 and out.startswith("by disagreement over owl_a, owl_b: 9 rows")
    assert (tmp_path / "ids_two.txt").read_text() == ids.read_text()


@pytest.mark.parametrize("args, message", [
    (["--limit", "0"], "--limit 0: the number of rows to select, at least 1"),
    (["--by", "uncertainty", "--tasks", "owl_a,owl_b"], "--tasks and several job outputs give "
                                                        "the tasks compared by --by disagreement"),
    (["--by", "disagreement", "--task", "owl_a"], "--task picks the one task of --by "
                                                  "uncertainty"),
    (["--tasks", "owl_a"], "two or more distinct tasks of"),
    (["--tasks", "owl_a,owl_b", "--iou", "1"], "--iou 1: an overlap in (0, 1)"),
    (["--task", "nope"], "no task folder 'nope'"),
    (["--tasks", "owl_a,nope"], "no task folder 'nope'"),
    (["--ids-file", "/no/such/folder/ids.txt"], "--ids-file '/no/such/folder/ids.txt': a file "
                                                "to write in an existing local folder"),
])
def test_bad_options_are_refused_naming_the_flag(two_task_job, capsys, args, message):
    code, _, err = _select(capsys, two_task_job[0], *args)
    assert code == 2 and message in err, err


def test_export_refuses_an_ids_file_it_cannot_read_or_that_holds_no_id(two_task_job, tmp_path,
                                                                       capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    for path, message in ((tmp_path / "missing.txt", "cannot be read"),
                          (tmp_path / "empty.txt", "holds no row id (one id a line)")):
        code = main(["export", two_task_job[0], "--task", "owl_a", "--format", "coco",
                     "--out", str(tmp_path / "coco"), "--ids-file", str(path)])
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "coco").exists()
