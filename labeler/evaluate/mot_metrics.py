"""Multi-object tracking metrics of one video: CLEAR MOT (MOTA, ID switches; Bernardin and
Stiefelhagen 2008) and identity scores (IDF1; Ristani et al. 2016), computed as TrackEval
computes them for MOTChallenge.

Input per labeled frame: the ground truth's objects and the tracker's boxes, each with an id
and a class. A tracker box may match an object of its class whose box it overlaps by IoU >=
`iou` (0.5, MOTChallenge's).

- CLEAR, frame by frame: the pairs are assigned to maximise first the pairs that continue
  the previous frame's matches (a frame without objects or without tracker boxes is passed
  over: the matches before it are continued, as TrackEval does), then the total IoU
  (scipy's linear_sum_assignment on IoU + 1000 for a continued pair). A match is a true
  positive; an object matched to another tracker id than at its last match is an ID
  switch. MOTA = 1 - (FN + FP + IDSW) / objects; MOTP = mean IoU of the matches.
- Identity, over the whole video: each object track is paired with at most one tracker
  track, maximising the frames in which the two match (IoU >= iou); IDTP is that many,
  IDF1 = 2 IDTP / (objects + tracker boxes).

py-motmetrics (numpy 1 only) and TrackEval (its PyPI fork needs OpenCV and matplotlib) were
not taken in for these; docs/eval.md records the check of these against TrackEval.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.optimize import linear_sum_assignment

from labeler.tracking.tracker import box_iou

CONTINUED_BONUS = 1000.0  # outweighs any sum of IoUs: continuing a match comes first


@dataclass
class FrameTracks:
    """One frame: objects (ground truth) and tracker boxes, each (n, 4) xyxy pixels, with
    ids (n,) int and classes (n,) int."""

    truth_boxes: np.ndarray
    truth_ids: np.ndarray
    truth_classes: np.ndarray
    boxes: np.ndarray
    ids: np.ndarray
    classes: np.ndarray


@dataclass
class TrackScores:
    """Counts over a video (or several, added up) and the scores they give."""

    objects: int = 0  # ground-truth boxes
    boxes: int = 0  # tracker boxes
    matches: int = 0
    id_switches: int = 0
    iou_sum: float = 0.0
    idtp: int = 0

    def __add__(self, other: "TrackScores") -> "TrackScores":
        return TrackScores(*(getattr(self, f.name) + getattr(other, f.name)
                             for f in fields(self)))

    @property
    def false_positives(self) -> int:
        return self.boxes - self.matches

    @property
    def misses(self) -> int:
        return self.objects - self.matches

    @property
    def mota(self) -> float | None:
        if not self.objects:
            return None
        return 1.0 - (self.misses + self.false_positives + self.id_switches) / self.objects

    @property
    def motp(self) -> float | None:
        return self.iou_sum / self.matches if self.matches else None

    @property
    def idf1(self) -> float | None:
        total = self.objects + self.boxes
        return 2.0 * self.idtp / total if total else None

    def figures(self) -> dict:
        """JSON-able: the counts and the scores (None where undefined)."""
        return {"objects": self.objects, "boxes": self.boxes, "matches": self.matches,
                "false_positives": self.false_positives, "misses": self.misses,
                "id_switches": self.id_switches, "mota": self.mota, "motp": self.motp,
                "idf1": self.idf1, "idtp": self.idtp}


def _similarity(frame: FrameTracks, iou: float) -> np.ndarray:
    """(objects, tracker boxes) IoU, 0 where under `iou` or the classes differ."""
    if not len(frame.truth_boxes) or not len(frame.boxes):
        return np.zeros((len(frame.truth_boxes), len(frame.boxes)))
    overlap = box_iou(frame.truth_boxes, frame.boxes)
    same = frame.truth_classes[:, None] == frame.classes[None, :]
    return np.where((overlap >= iou - 1e-9) & same, overlap, 0.0)


def score_video(frames: list[FrameTracks], iou: float = 0.5) -> TrackScores:
    """CLEAR and identity counts of one video's labeled frames, in time order."""
    scores = TrackScores()
    last_match: dict[int, int] = {}  # object id -> tracker id at its last match
    # object id -> tracker id matched in the previous frame that had objects and boxes (TrackEval
    # passes over a frame without either: it leaves the matches to continue as they were)
    previous: dict[int, int] = {}
    pair_frames: dict[tuple[int, int], int] = {}  # (object, tracker id) -> frames matching
    object_ids, tracker_ids = set(), set()
    for frame in frames:
        similarity = _similarity(frame, iou)
        scores.objects += len(frame.truth_ids)
        scores.boxes += len(frame.ids)
        object_ids.update(frame.truth_ids.tolist())
        tracker_ids.update(frame.ids.tolist())
        if not len(frame.truth_ids) or not len(frame.ids):
            continue
        for g, t in zip(*np.nonzero(similarity)):
            key = (int(frame.truth_ids[g]), int(frame.ids[t]))
            pair_frames[key] = pair_frames.get(key, 0) + 1
        last = np.array([previous.get(int(g), -1) for g in frame.truth_ids], dtype=np.int64)
        continued = (last[:, None] == frame.ids[None, :]) & (last[:, None] >= 0)
        gain = similarity + CONTINUED_BONUS * (continued & (similarity > 0))
        rows, cols = linear_sum_assignment(gain, maximize=True)
        matched = similarity[rows, cols] > 0
        previous = {}
        for g, t in zip(rows[matched], cols[matched]):
            object_id, tracker_id = int(frame.truth_ids[g]), int(frame.ids[t])
            if object_id in last_match and last_match[object_id] != tracker_id:
                scores.id_switches += 1
            last_match[object_id] = previous[object_id] = tracker_id
            scores.matches += 1
            scores.iou_sum += float(similarity[g, t])
    scores.idtp = _identity_matches(pair_frames, sorted(object_ids), sorted(tracker_ids))
    return scores


def _identity_matches(pair_frames: dict[tuple[int, int], int], object_ids: list[int],
                      tracker_ids: list[int]) -> int:
    """The most frames matched over a one-to-one pairing of object and tracker tracks."""
    if not pair_frames:
        return 0
    rows = {g: k for k, g in enumerate(object_ids)}
    cols = {t: k for k, t in enumerate(tracker_ids)}
    counts = np.zeros((len(rows), len(cols)))
    for (g, t), n in pair_frames.items():
        counts[rows[g], cols[t]] = n
    r, c = linear_sum_assignment(counts, maximize=True)
    return int(counts[r, c].sum())
