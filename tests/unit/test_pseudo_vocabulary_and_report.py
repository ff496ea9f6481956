"""Curated vocabularies, the keep / filter rules and the end-of-job report (labeler.pseudo)."""

import json
import logging

import pyarrow as pa
import pytest

from labeler.pseudo.filtering import (
    image_verdict,
    no_queries_reason,
    reason_kind,
    truncation_warning,
)
from labeler.pseudo.report import pseudo_label_report, report_lines, write_report
from labeler.pseudo.vocabulary import Vocabulary, clean_names, load_vocabulary
from labeler.schemas import RECORD_SCHEMA

# ------------------------------------------------------------------------------ vocabulary


def test_names_are_stripped_and_deduplicated_case_insensitively():
    vocab = clean_names([" cat ", "", "Dog", "cat", "dog", "  ", "bird", "CAT"])
    assert vocab.names == ("cat", "Dog", "bird")
    assert vocab.blanks == 2 and vocab.duplicates == ("cat", "dog", "CAT")
    assert vocab.dropped() == ("vocabulary: dropped 2 blank entries and 3 duplicates "
                               "('cat', 'dog', 'CAT'); 3 names kept")


def test_a_clean_vocabulary_reports_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        vocab = load_vocabulary(["cat", "dog"])
    assert vocab.dropped() is None and caplog.records == []


def test_many_duplicates_are_summarised():
    vocab = clean_names(["a"] * 9)
    assert vocab.dropped() == ("vocabulary: dropped 8 duplicates ('a', 'a', 'a', 'a', 'a' and "
                               "3 more); 1 names kept")


def test_file_after_inline_names_one_warning_line(tmp_path, caplog):
    path = tmp_path / "lvis.txt"
    path.write_bytes("\ufeffzebra\r\n\r\nCat\r\nteddy bear\r\n".encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="labeler.pseudo.vocabulary"):
        vocab = load_vocabulary(["cat", "dog"], str(path))
    assert vocab.names == ("cat", "dog", "zebra", "teddy bear")
    assert [r.getMessage() for r in caplog.records] == [
        "vocabulary: dropped 1 blank entry and 1 duplicate ('Cat'); 4 names kept"]


def test_digest_names_the_vocabulary():
    a, b = Vocabulary(("cat", "dog")), Vocabulary(("dog", "cat"))
    assert len(a.digest) == 12 and a.digest == Vocabulary(("cat", "dog")).digest
    assert a.digest != b.digest


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        load_vocabulary([], str(tmp_path / "missing.txt"))


# ------------------------------------------------------------------------------- filtering


def test_image_verdict():
    assert image_verdict(0.3, 0.3, 0.1) == (True, None)  # best >= image threshold
    assert image_verdict(0.95, 0.3, 0.1) == (True, None)
    assert image_verdict(0.2134, 0.3, 0.1) == (
        False, "below image threshold: best box 0.213 < 0.3")
    assert image_verdict(None, 0.3, 0.1) == (
        False, "no box: no box scores above the box threshold 0.1")
    assert image_verdict(None, 0.0, 0.1)[0] is False  # no box, nothing to keep
    # just under: as many digits as it takes not to read "0.300 < 0.3"
    assert image_verdict(0.29999998, 0.3, 0.1) == (
        False, "below image threshold: best box 0.29999998 < 0.3")
    assert image_verdict(0.2996, 0.3, 0.1)[1].endswith("best box 0.2996 < 0.3")


def test_reasons_have_a_kind():
    assert no_queries_reason(None) == (
        "no queries: the caption is empty and there is no vocabulary")
    assert no_queries_reason("  ").startswith("no queries: the caption is empty")
    assert no_queries_reason("on the!").startswith("no queries: the caption holds no word but")
    assert reason_kind(no_queries_reason(None)) == "no queries"
    assert reason_kind(image_verdict(0.2, 0.3, 0.1)[1]) == "below image threshold"
    assert reason_kind(image_verdict(None, 0.3, 0.1)[1]) == "no box"


def test_truncation_warning():
    assert truncation_warning(["a b", "c d"], 10, 16) == (
        "2 of 10 queries are longer than the text model's 16 tokens (with the template) and "
        "were truncated: 'a b', 'c d'")
    assert truncation_warning(list("abcd"), 4, 16).endswith("'a', 'b', 'c', ...")


# ---------------------------------------------------------------------------------- report


def _row(i, scores_labels=(), kept=None, reason=None, error=None):
    dets = [{"label": label, "score": score, "x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0,
             "objectness": 0.5} for score, label in scores_labels]
    return {"id": f"img{i}", "uri": f"/data/img{i}.jpg", "task": "pseudo-label",
            "task_name": "pseudo-label", "model": "m", "model_family": "owlv2",
            "parameters": "{}", "detections": None if error else dets, "kept": kept,
            "filter_reason": reason, "error": error}


ROWS = [
    _row(0, [(0.92, "dog"), (0.41, "a dog"), (0.15, "cat")], kept=True),
    _row(1, [(0.55, "dog"), (0.12, "tree")], kept=True),
    _row(2, [(0.25, "cat")], kept=False, reason="below image threshold: best box 0.250 < 0.3"),
    _row(3, [], kept=False, reason="no box: no box scores above the box threshold 0.1"),
    _row(4, [], kept=False, reason="no queries: the caption is empty and there is no vocabulary"),
    _row(5, error="decode failed: not an image"),
    _row(6, [(0.7, "cat"), (0.3, "dog")], kept=True),  # scores stored as float32
]
EXPECTED = {
    "images": 7, "errors": 1, "kept": 3,
    "not_kept": {"below image threshold": 1, "no box": 1, "no queries": 1},
    "boxes": 8,
    "thresholds": [
        {"threshold": 0.1, "images": 4, "boxes": 8},  # best: .92 .55 .25 .7
        {"threshold": 0.3, "images": 3, "boxes": 5},  # .92 .41 .55 .7 .3
        {"threshold": 0.5, "images": 3, "boxes": 3},  # .92 .55 .7
        {"threshold": 0.7, "images": 2, "boxes": 2},  # .92 .7
    ],
    # kept images only: row 2's cat is not counted
    "top_labels": [{"label": "dog", "boxes": 3}, {"label": "cat", "boxes": 2},
                   {"label": "a dog", "boxes": 1}, {"label": "tree", "boxes": 1}],
    "top_labels_max_undercount": 0,  # four labels: counted exactly
}


def _table(rows):
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def test_report_counts_by_hand():
    assert pseudo_label_report(_table(ROWS)) == EXPECTED


def test_report_is_the_same_over_several_batches():
    table = pa.concat_tables([_table(ROWS[:2]), _table(ROWS[2:5]), _table(ROWS[5:])])
    assert table.column("detections").num_chunks == 3
    assert pseudo_label_report(table) == EXPECTED


def test_report_of_no_rows_and_top_n():
    empty = pseudo_label_report(_table([]))
    assert empty["images"] == 0 and empty["top_labels"] == []
    assert empty["not_kept"] == {"below image threshold": 0, "no box": 0, "no queries": 0}
    assert report_lines(empty)[1] == "  not kept: none"
    assert all(t["images"] == 0 for t in empty["thresholds"])
    top = pseudo_label_report(_table(ROWS), top=1)["top_labels"]
    assert top == [{"label": "dog", "boxes": 3}]


def test_report_lines_and_json(tmp_path):
    report = pseudo_label_report(_table(ROWS))
    lines = report_lines(report)
    assert lines[0] == ("pseudo-label: 7 images (1 errors), 3 kept at the image threshold, "
                        "8 boxes")
    assert lines[1] == "  not kept: 1 below image threshold, 1 no box, 1 no queries"
    assert lines[3].split() == ["0.1", "4", "8"] and lines[6].split() == ["0.7", "2", "2"]
    assert lines[-1] == "  top labels: dog (3), cat (2), a dog (1), tree (1)"
    path = tmp_path / "out" / "pseudo-label" / "_report.json"
    write_report(str(path), report)
    assert json.loads(path.read_text()) == EXPECTED


def test_label_counts_stay_bounded_and_find_the_frequent_labels():
    """Caption n-grams make a long tail of distinct labels: the summary keeps at most twice
    its capacity, finds every label more frequent than its undercount, and each count is
    at most that far below the truth."""
    import random

    from labeler.pseudo.report import LabelCounts

    rng = random.Random(0)
    frequent = {f"label{i}": 400 - 50 * i for i in range(5)}
    stream = [(label, 1) for label, n in frequent.items() for _ in range(n)]
    stream += [(f"tail {k}", rng.randint(1, 3)) for k in range(5000)]
    rng.shuffle(stream)
    true: dict[str, int] = {}
    counts = LabelCounts(capacity=50)
    largest = 0
    for label, n in stream:
        true[label] = true.get(label, 0) + n
        counts.add(label, n)
        largest = max(largest, len(counts.counts))
    assert largest <= 2 * 50 + 1
    total = sum(true.values())
    assert 0 < counts.undercount <= total / 51
    top = counts.top(5)
    assert [label for label, _ in top] == list(frequent)
    for label, n in top:
        assert true[label] - counts.undercount <= n <= true[label]


def test_report_says_how_far_its_top_labels_may_be_short():
    rows = [_row(i, [(0.9, "dog"), (0.8, f"thing {i}")], kept=True) for i in range(30)]
    report = pseudo_label_report(_table(rows), top=1, max_labels=4)
    assert report["top_labels"][0]["label"] == "dog"
    assert 0 < report["top_labels_max_undercount"] <= 60 / 5
    assert 30 - report["top_labels_max_undercount"] <= report["top_labels"][0]["boxes"] <= 30
    exact = pseudo_label_report(_table(rows), top=1)
    assert exact["top_labels"] == [{"label": "dog", "boxes": 30}]
    assert exact["top_labels_max_undercount"] == 0
    assert "short" in report_lines(report)[-1] and "short" not in report_lines(exact)[-1]
