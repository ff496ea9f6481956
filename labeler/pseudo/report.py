"""The end-of-job report of a pseudo-label task, from its output rows (pure functions).

    report = pseudo_label_report(table)      # a pyarrow Table of the task's records
    print("\\n".join(report_lines(report)))
    write_report("out/pseudo-label/_report.json", report)

Counts, like the OWL-ST paper's Figure 3, at each threshold t of THRESHOLDS: images whose
best box scores >= t and boxes scoring >= t (over the rows without error; the stored boxes
already passed the box threshold). Also: rows, error rows (counted apart from all the
rest), images kept at the image threshold, the not-kept ones by reason kind
(labeler.pseudo.filtering), and the labels with most boxes over the kept images.
The table is read one record batch at a time, so a job's output of any size fits; the
label counts are a bounded summary (LabelCounts), exact until the labels outnumber it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.pseudo.filtering import REASON_KINDS, reason_kind

THRESHOLDS = (0.1, 0.3, 0.5, 0.7)  # the paper's Figure 3
TOP_LABELS = 20
COLUMNS = ("detections", "kept", "filter_reason", "error")
# Labels counted exactly before the summary starts to prune: caption n-grams make millions of
# distinct labels over a web-scale job, and an exact counter would hold them all on the
# driver. 100,000 labels (up to twice that between prunes) is tens of MB.
MAX_TRACKED_LABELS = 100_000


class LabelCounts:
    """Box counts per label in bounded memory: the Misra-Gries summary, batch by batch.

    Counts are exact while at most 2 x capacity distinct labels have been seen. Past that,
    each prune subtracts c, the (capacity + 1)-th largest count, from every label and drops
    those left at <= 0, keeping at most `capacity`. Every prune takes c from at least
    capacity + 1 labels, so the sum of all c (`undercount`) is at most N / (capacity + 1) for
    N boxes counted; a label's count is at most `undercount` below its true count, and every
    label whose true count exceeds `undercount` is still there."""

    def __init__(self, capacity: int = MAX_TRACKED_LABELS):
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.undercount = 0

    def add(self, label: str, count: int) -> None:
        self.counts[label] = self.counts.get(label, 0) + count
        if len(self.counts) > 2 * self.capacity:
            self._prune()

    def _prune(self) -> None:
        values = np.fromiter(self.counts.values(), dtype=np.int64, count=len(self.counts))
        cut = int(np.partition(values, -(self.capacity + 1))[-(self.capacity + 1)])
        self.counts = {label: n - cut for label, n in self.counts.items() if n > cut}
        self.undercount += cut

    def top(self, n: int) -> list[tuple[str, int]]:
        """The n labels with most boxes, ties by name."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def pseudo_label_report(rows: pa.Table | Iterable[pa.RecordBatch],
                        thresholds: tuple[float, ...] = THRESHOLDS, top: int = TOP_LABELS,
                        max_labels: int = MAX_TRACKED_LABELS) -> dict:
    """Output rows of one pseudo-label task (a table, or record batches holding at least
    COLUMNS, e.g. a dataset scanner's, so a job's output is never loaded whole) -> a
    JSON-able dict:
    {"images", "errors", "kept", "not_kept": {kind: n}, "boxes",
     "thresholds": [{"threshold", "images", "boxes"}], "top_labels": [{"label", "boxes"}],
     "top_labels_max_undercount"}.
    "images" counts every row; the others count rows without error (and their boxes).
    top_labels' counts are exact when top_labels_max_undercount is 0, else each is at most
    that many boxes short (LabelCounts with capacity max_labels)."""
    images = errors = kept = boxes = 0
    per_threshold = np.zeros((len(thresholds), 2), dtype=np.int64)  # images, boxes
    not_kept: Counter[str] = Counter(dict.fromkeys(REASON_KINDS, 0))  # every kind, even 0
    labels = LabelCounts(max_labels)
    # Scores are stored as float32: compared in float32, a box stored as 0.7 is >= 0.7.
    cuts = np.asarray(thresholds, dtype=np.float32)
    batches = rows.select(list(COLUMNS)).to_batches() if isinstance(rows, pa.Table) else rows
    for batch in batches:
        n = batch.num_rows
        images += n
        ok = pc.is_null(batch.column("error")).to_numpy(zero_copy_only=False)
        errors += int(n - ok.sum())
        is_kept = ok & pc.fill_null(batch.column("kept"), False).to_numpy(zero_copy_only=False)
        kept += int(is_kept.sum())
        reasons = batch.column("filter_reason").to_pylist()
        not_kept.update(reason_kind(r) for r, good, k in zip(reasons, ok, is_kept)
                        if good and not k and r)

        detections = batch.column("detections")
        flat = pc.list_flatten(detections)
        parents = pc.list_parent_indices(detections).to_numpy(zero_copy_only=False)
        scores = flat.field("score").to_numpy(zero_copy_only=False).astype(np.float32)
        box_ok = ok[parents]
        scores, rows = scores[box_ok], parents[box_ok]
        boxes += len(scores)
        best = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(best, rows, scores)
        per_threshold[:, 0] += (best[None, :] >= cuts[:, None]).sum(axis=1)
        per_threshold[:, 1] += (scores[None, :] >= cuts[:, None]).sum(axis=1)

        kept_labels = flat.field("label").filter(pa.array(is_kept[parents]))
        for item in pc.value_counts(kept_labels).to_pylist():
            labels.add(item["values"], item["counts"])
    return {
        "images": images, "errors": errors, "kept": kept,
        "not_kept": dict(sorted(not_kept.items())), "boxes": boxes,
        "thresholds": [{"threshold": t, "images": int(i), "boxes": int(b)}
                       for t, (i, b) in zip(thresholds, per_threshold)],
        "top_labels": [{"label": label, "boxes": count} for label, count in labels.top(top)],
        "top_labels_max_undercount": labels.undercount,
    }


def report_lines(report: dict) -> list[str]:
    """The report as lines for a terminal."""
    not_kept = ", ".join(f"{n} {kind}" for kind, n in report["not_kept"].items() if n)
    lines = [
        f"pseudo-label: {report['images']} images ({report['errors']} errors), "
        f"{report['kept']} kept at the image threshold, {report['boxes']} boxes",
        f"  not kept: {not_kept or 'none'}",
        "  threshold   images    boxes",
    ]
    lines += [f"  {row['threshold']:>9g} {row['images']:>8} {row['boxes']:>8}"
              for row in report["thresholds"]]
    top = ", ".join(f"{item['label']} ({item['boxes']})" for item in report["top_labels"])
    short = report.get("top_labels_max_undercount", 0)
    note = f" (counts at most {short} short: too many labels to count exactly)" if short else ""
    lines.append(f"  top labels: {top or 'none'}{note}")
    return lines


def write_report(uri: str, report: dict) -> None:
    """Write the report as JSON to a local path (folders made) or an s3:// URI."""
    from labeler.storage import filesystem_for, is_s3

    fs, path = filesystem_for(uri)
    if not is_s3(uri):
        fs.create_dir(path.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8"))
