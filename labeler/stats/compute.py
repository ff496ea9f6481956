"""The figures of one task of a job's output, one record batch at a time (`labeler stats`).

    stats = TaskStats(folder.kind, scores=(0.1, 0.3, 0.5, 0.7))
    for batch in TaskRows(job, folder).batches(stats.columns):
        stats.add(batch)
    stats.figures(top=30)    # a JSON-able dict, see TaskStats.figures

Every row is counted, error rows by reason (labeler.export.rows.Reasons). Over the rows
without error (pseudo-label rows with `kept: false` included; a video task's rows are its
frames or clips, "images" below):

- box tasks (labeler.export.rows.BOX_TASKS): rows with at least one box, boxes, and per label
  (an empty label, a region proposal's, counts as `object`, as in an export): boxes, images
  having it, boxes scoring >= each of `scores`, the median score; for a video task with
  `track`, the tracks (each counted at its first box) and the boxes in a track, in all and
  per label;
- the other tasks (text): rows whose text is empty (null or only whitespace), the mean and
  the largest length in characters (Unicode code points) of the other texts.

Memory is bounded whatever the number of rows: a batch, READ_BATCH_ROWS rows, and per label
at most 2 x MAX_LABELS labels, each with 2 + len(scores) + SCORE_BINS integers. Labels are
chosen by a Misra-Gries summary (labeler.pseudo.report.LabelCounts: a pseudo-label task has
millions of distinct n-gram labels): exact while at most 2 x MAX_LABELS distinct labels were
seen; past that, the rarest labels are dropped with their figures, and every figure of a
label may be short by at most `max_undercount` boxes (LabelCounts.undercount), which is at
most boxes / (MAX_LABELS + 1). The median is read from a histogram of SCORE_BINS bins per
label: the middle of the bin holding the lower median, within 0.005 of it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.export.rows import BOX_TASKS, UNNAMED_LABEL, Reasons
from labeler.pseudo.report import LabelCounts

# Labels whose figures are kept (up to twice as many between prunes): each holds
# 2 + len(scores) + SCORE_BINS int64, about 1 KB with its array and key, so 20,000 labels
# take some 20 MB.
MAX_LABELS = 10_000
# Score histogram bins per label, over [0, 1]: the median is approximate to 1 / SCORE_BINS.
SCORE_BINS = 100
# Error reasons listed per task (all are counted).
TOP_REASONS = 5
# A label's figures: one int64 row [boxes, images, tracks, boxes >= scores[0], ...,
# histogram].
BOXES, IMAGES, TRACKS, AT_SCORES = 0, 1, 2, 3
# Segments of a batch apart in the keys that find a track's first box (track ids < 2^31).
SEGMENT = 2**32


class TaskStats:
    """The figures of one task (see the module docstring), added batch by batch. kind: the
    task kind (a `task` value); scores: the score thresholds, each in [0, 1]."""

    def __init__(self, kind: str, scores: tuple[float, ...]):
        self.kind = kind
        self.boxed = kind in BOX_TASKS
        self.scores = tuple(scores)
        # Scores are stored as float32: compared in float32, a box stored as 0.7 is >= 0.7.
        self._cuts = np.asarray(scores, dtype=np.float32)
        self.columns = ("error", "detections", "id") if self.boxed else ("error", "text")
        self.rows = self.error_rows = 0
        self.errors = Reasons()
        self.rows_with_boxes = self.boxes = 0
        self.labels = LabelCounts(MAX_LABELS)  # chooses the labels kept in self.per_label
        self.per_label: dict[str, np.ndarray] = {}  # label -> int64 [figure], see AT_SCORES
        self.empty_texts = self.text_chars = self.max_chars = 0
        # Tracks (video tasks with `track`): counted at their first box. Rows come video by
        # video in time order, and a video numbers its tracks in order of first box, so a
        # box starts a track when its id is above every id seen before in its video; the
        # video of the last batch's end and its highest id carry over to the next batch.
        self.tracked = False
        self.tracks = self.tracked_boxes = 0
        self._video: str | None = None
        self._video_track = 0

    def add(self, batch: pa.RecordBatch) -> None:
        """Count a batch of the task's rows (holding self.columns, those the files have)."""
        n = batch.num_rows
        if not n:
            return
        self.rows += n
        error = _column(batch, "error", pa.string())
        ok = pc.is_null(error).to_numpy(zero_copy_only=False)
        self.error_rows += int(n - ok.sum())
        for reason in error.drop_null().to_pylist():
            self.errors.add(reason)
        if self.boxed:
            self._add_boxes(batch, ok)
        else:
            self._add_texts(_column(batch, "text", pa.string()).filter(pa.array(ok)))

    def _add_boxes(self, batch: pa.RecordBatch, ok: np.ndarray) -> None:
        if "detections" not in batch.schema.names:
            return
        detections = batch.column("detections")
        lengths = pc.fill_null(pc.list_value_length(detections), 0).to_numpy(zero_copy_only=False)
        self.rows_with_boxes += int((ok & (lengths > 0)).sum())
        flat = pc.list_flatten(detections)
        rows = pc.list_parent_indices(detections).to_numpy(zero_copy_only=False)
        good = ok[rows]
        if not good.any():
            return
        labels = pc.fill_null(flat.field("label"), "").filter(pa.array(good))
        labels = pc.if_else(pc.equal(labels, ""), UNNAMED_LABEL, labels)
        scores = flat.field("score").to_numpy(zero_copy_only=False).astype(np.float32)[good]
        rows = rows[good]
        self.boxes += len(scores)

        encoded = pc.dictionary_encode(labels)
        names = encoded.dictionary.to_pylist()
        index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        k = len(names)
        figures = np.zeros((k, AT_SCORES + len(self.scores) + SCORE_BINS), dtype=np.int64)
        figures[:, BOXES] = np.bincount(index, minlength=k)
        pairs = np.unique(index * batch.num_rows + rows)  # (label, row) with a box
        figures[:, IMAGES] = np.bincount(pairs // batch.num_rows, minlength=k)
        firsts = self._first_boxes_of_tracks(batch, flat, good, rows)
        figures[:, TRACKS] = np.bincount(index[firsts], minlength=k)
        for j, cut in enumerate(self._cuts):
            figures[:, AT_SCORES + j] = np.bincount(index[scores >= cut], minlength=k)
        bins = np.clip(np.floor(scores * np.float32(SCORE_BINS)).astype(np.int64), 0,
                       SCORE_BINS - 1)
        figures[:, AT_SCORES + len(self.scores):] = np.bincount(
            index * SCORE_BINS + bins, minlength=k * SCORE_BINS).reshape(k, SCORE_BINS)

        pruned = self.labels.undercount
        for name, count in zip(names, figures[:, BOXES].tolist()):
            self.labels.add(name, count)
        if self.labels.undercount != pruned:  # labels were dropped: their figures go too
            self.per_label = {name: row for name, row in self.per_label.items()
                              if name in self.labels.counts}
        for name, row in zip(names, figures):
            if name in self.labels.counts:
                held = self.per_label.get(name)
                if held is None:
                    self.per_label[name] = row.copy()
                else:
                    held += row

    def _first_boxes_of_tracks(self, batch: pa.RecordBatch, flat: pa.StructArray,
                               good: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which boxes of the rows without error (`good` of the batch's boxes; `rows`: the
        row of each of those) start a track, as the docstring of __init__ says; counts the
        tracked boxes and the tracks."""
        if flat.type.get_field_index("track_id") < 0 or "id" not in batch.schema.names:
            return np.zeros(len(rows), dtype=bool)  # an output from before tracking
        tracks = pc.fill_null(flat.field("track_id"), 0).to_numpy(
            zero_copy_only=False).astype(np.int64)[good]
        ids = batch.column("id").to_numpy(zero_copy_only=False)
        segment = np.concatenate([[0], np.cumsum(ids[1:] != ids[:-1])])  # per row
        keys = segment[rows] * SEGMENT + tracks
        # The highest key before each box: the carried video's last id, or nothing.
        start = self._video_track if ids[0] == self._video else 0
        before = np.maximum.accumulate(np.concatenate([[start], keys]))[:-1]
        firsts = (tracks > 0) & (keys > before)
        last = segment[-1]
        in_last = tracks[segment[rows] == last]
        carried = self._video_track if ids[-1] == self._video and last == 0 else 0
        self._video = ids[-1]
        self._video_track = max(carried, int(in_last.max(initial=0)))
        self.tracked_boxes += int((tracks > 0).sum())
        self.tracks += int(firsts.sum())
        self.tracked = self.tracked or bool(self.tracked_boxes)
        return firsts

    def _add_texts(self, texts: pa.Array) -> None:
        lengths = pc.utf8_length(pc.fill_null(texts, "")).to_numpy(zero_copy_only=False)
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(texts, ""))), 0)
        blank = blank.to_numpy(zero_copy_only=False)
        self.empty_texts += int(blank.sum())
        lengths = lengths[~blank]
        if len(lengths):
            self.text_chars += int(lengths.sum())
            self.max_chars = max(self.max_chars, int(lengths.max()))

    def figures(self, top: int) -> dict:
        """The task's figures, JSON-able:
        {"rows", "error_rows", "errors": [{"reason", "rows"}] (the TOP_REASONS most frequent,
        then "other reasons"), and for a box task "boxes": {"rows_with_boxes", "boxes",
        "labels" (labels counted: all of them when max_undercount is 0), "labels_not_shown",
        "max_undercount", "per_label": [{"label", "boxes", "images", "at_score": {"0.5": boxes
        scoring >= 0.5, ...}, "median_score"}]} (the `top` labels with most boxes, ties by
        label) and, when boxes have track ids, "tracks": {"tracks", "tracked_boxes",
        "boxes_per_track" (1 decimal)} and each label's "tracks"; or for a text task "text":
        {"empty", "mean_chars" (over the texts not empty, 1 decimal; null when none),
        "max_chars"}}."""
        out: dict = {
            "rows": self.rows, "error_rows": self.error_rows,
            "errors": [{"reason": reason, "rows": n} for reason, n in self.errors.top(TOP_REASONS)],
        }
        if not self.boxed:
            texts = self.rows - self.error_rows - self.empty_texts
            out["text"] = {"empty": self.empty_texts,
                           "mean_chars": round(self.text_chars / texts, 1) if texts else None,
                           "max_chars": self.max_chars}
            return out
        ranked = sorted(self.per_label.items(), key=lambda item: (-int(item[1][BOXES]), item[0]))
        out["boxes"] = {
            "rows_with_boxes": self.rows_with_boxes, "boxes": self.boxes,
            "labels": len(ranked), "labels_not_shown": max(0, len(ranked) - top),
            "max_undercount": self.labels.undercount,
            "per_label": [self._label(name, row) for name, row in ranked[:top]],
        }
        if self.tracked:
            out["boxes"]["tracks"] = {
                "tracks": self.tracks, "tracked_boxes": self.tracked_boxes,
                "boxes_per_track": round(self.tracked_boxes / max(self.tracks, 1), 1)}
            for label, (_, row) in zip(out["boxes"]["per_label"], ranked[:top]):
                label["tracks"] = int(row[TRACKS])
        return out

    def _label(self, name: str, row: np.ndarray) -> dict:
        return {"label": name, "boxes": int(row[BOXES]), "images": int(row[IMAGES]),
                "at_score": {f"{s:g}": int(row[AT_SCORES + j]) for j, s in enumerate(self.scores)},
                "median_score": median_of(row[AT_SCORES + len(self.scores):])}


def median_of(histogram: np.ndarray) -> float | None:
    """The lower median of the scores counted in `histogram` (SCORE_BINS bins over [0, 1]),
    as the middle of its bin, rounded to 3 decimals; None when it counts nothing."""
    total = int(histogram.sum())
    if not total:
        return None
    b = int(np.searchsorted(np.cumsum(histogram), (total + 1) // 2))
    return round((b + 0.5) / len(histogram), 3)


def _column(batch: pa.RecordBatch, name: str, type_: pa.DataType) -> pa.Array:
    """A column of the batch, or nulls where the files lack it (an older output)."""
    if name in batch.schema.names:
        return batch.column(name)
    return pa.nulls(batch.num_rows, type_)
