"""Tracking by detection: links the boxes of a video's labeled frames into tracks.

Boxes in, one track id per box out. No image is looked at, so the same boxes always give
the same tracks. Association is ByteTrack's (Zhang et al. 2022), per label (or over all
labels, `across_labels`), frame by frame in time order:

1. each live track of the label predicts its box: its last box moved at constant velocity
   (the change of its box per labeled frame, from its last two boxes) for the frames since;
2. the frame's boxes scored at least `new_track_score` are assigned to the predictions by
   an optimal assignment on IoU (scipy's linear_sum_assignment); a pair with IoU >= `iou`
   continues the track;
3. the tracks and high-scored boxes left are assigned again, on the IoU of the boxes each
   grown by `buffer` of its size on every side (C-BIoU, Yang et al. 2023: an object that
   moved more than its own overlap allows, or a track not yet moving, is still found,
   while the first round keeps close objects apart);
4. the tracks left are assigned as in 2 to the frame's lower-scored boxes;
5. a high-scored box left over starts a track, a lower-scored one stays in none;
6. a track that goes unmatched in more than `max_missed` labeled frames in a row ends.

Tracks of fewer than `min_length` boxes are dropped; the others are numbered 1, 2, ... in
order of their first box (frame, then the box's place in its row).

Steps are labeled frames, not seconds: frames are sampled at a fixed rate, or skipped by
`min_change` because little moved, so a frame skipped that way is not a step in which an
object could have travelled. supervision's ByteTrack does not fit a labeling job: it returns
only the boxes it tracks (a job keeps every box), links boxes across labels, and its Kalman
filter is tuned for 30 fps pedestrian video.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from labeler.config import TrackingSpec

NO_TRACK = 0  # the id of a box in no track; tracks are numbered from 1


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (m, 4) with every box of b (n, 4), xyxy: (m, n); 0 where a
    box has no area."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    # np.maximum, not np.clip: this runs per frame on small arrays, where clip's overhead
    # was half of the tracker's time.
    inter = np.maximum(x1 - x0, 0.0) * np.maximum(y1 - y0, 0.0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class _LiveTracks:
    """The tracks that may still continue, as arrays (one entry per track): last box (T, 4)
    xyxy px, velocity (T, 4) px per labeled frame, labeled frame of the last box (T,),
    label (T,), and number (T,): the track's index in creation order."""

    def __init__(self):
        self.box = np.zeros((0, 4))
        self.velocity = np.zeros((0, 4))
        self.frame = np.zeros(0, dtype=np.int64)
        self.label = np.zeros(0, dtype=np.int64)
        self.number = np.zeros(0, dtype=np.int64)

    def keep(self, which: np.ndarray) -> None:
        for name in ("box", "velocity", "frame", "label", "number"):
            setattr(self, name, getattr(self, name)[which])

    def extend(self, which: np.ndarray, boxes: np.ndarray, frame: int) -> None:
        """Tracks `which` continue with `boxes` in `frame`; velocity from their last box."""
        self.velocity[which] = (boxes - self.box[which]) / (frame - self.frame[which])[:, None]
        self.box[which] = boxes
        self.frame[which] = frame

    def start(self, boxes: np.ndarray, labels: np.ndarray, frame: int, first: int) -> None:
        """New tracks, numbered from `first`, standing still until their second box."""
        n = len(boxes)
        self.box = np.concatenate([self.box, boxes])
        self.velocity = np.concatenate([self.velocity, np.zeros((n, 4))])
        self.frame = np.concatenate([self.frame, np.full(n, frame)])
        self.label = np.concatenate([self.label, labels])
        self.number = np.concatenate([self.number, np.arange(first, first + n)])


def grown(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """Boxes (n, 4) xyxy, each grown by `buffer` times its width (height) on its left and
    right (top and bottom) sides, about its center."""
    pad = (boxes[:, 2:] - boxes[:, :2]) * buffer
    return np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], axis=1)


def _assign(predicted: np.ndarray, track_labels: np.ndarray, boxes: np.ndarray,
            labels: np.ndarray, min_iou: float,
            buffer: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(track positions, box positions) of the assignment with the most total IoU among
    pairs of one label and IoU >= min_iou (any other pair counts as no match, so it never
    displaces one), IoU taken of the boxes grown by `buffer` (grown()). One assignment for
    all labels: pairs of two labels gain nothing, so it is the optimal assignment of each
    label on its own."""
    if not len(predicted) or not len(boxes):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if buffer:
        predicted, boxes = grown(predicted, buffer), grown(boxes, buffer)
    iou = box_iou(predicted, boxes)
    gain = np.where((iou >= min_iou) & (track_labels[:, None] == labels[None, :]), iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    matched = gain[rows, cols] > 0
    return rows[matched], cols[matched]


def link_tracks(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                frame_starts: np.ndarray, spec: TrackingSpec) -> np.ndarray:
    """Track ids of a video's boxes.

    boxes (N, 4) float xyxy pixels, scores (N,) and labels (N,) int: every box of the
    video's labeled frames, frame after frame in time order; frame_starts (F + 1,): frame
    f's boxes are [frame_starts[f], frame_starts[f + 1]). Returns (N,) int64: each box's
    track id, 1, 2, ... in order of the track's first box, or NO_TRACK.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    # Across labels, every box is one label to the association.
    labels = np.asarray(labels, dtype=np.int64) * (not spec.across_labels)
    new_track_score = spec.new_track_score if spec.new_track_score is not None else -np.inf
    owner = np.full(len(boxes), -1, dtype=np.int64)  # each box's track number, -1: none
    live, tracks = _LiveTracks(), 0
    for frame in range(len(frame_starts) - 1):
        live.keep(frame - live.frame - 1 <= spec.max_missed)  # the others have ended
        predicted = live.box + live.velocity * (frame - live.frame)[:, None]
        mine = np.arange(int(frame_starts[frame]), int(frame_starts[frame + 1]))
        high = scores[mine] >= new_track_score
        waiting = np.arange(len(predicted))  # live tracks not matched yet in this frame
        left = mine[high]  # high boxes not matched yet
        for is_high, buffer in ((True, 0.0), (True, spec.buffer), (False, 0.0)):
            if buffer is None:
                continue
            candidates = left if is_high else mine[~high]
            t, c = _assign(predicted[waiting], live.label[waiting], boxes[candidates],
                           labels[candidates], spec.iou, buffer)
            if not len(t):
                continue
            live.extend(waiting[t], boxes[candidates[c]], frame)
            owner[candidates[c]] = live.number[waiting[t]]
            waiting = np.delete(waiting, t)
            if is_high:
                left = np.delete(candidates, c)
        if len(left):
            # High boxes left over start tracks, numbered in their order in the row.
            live.start(boxes[left], labels[left], frame, tracks)
            owner[left] = np.arange(tracks, tracks + len(left))
            tracks += len(left)
    return _numbered(owner, tracks, spec.min_length)


def _numbered(owner: np.ndarray, tracks: int, min_length: int) -> np.ndarray:
    """Track ids from track numbers (creation order, which is the order of first boxes):
    tracks of fewer than min_length boxes dropped, the others numbered 1, 2, ..."""
    lengths = np.bincount(owner[owner >= 0], minlength=tracks)
    kept = lengths >= min_length
    ids = np.append(np.where(kept, np.cumsum(kept), NO_TRACK), NO_TRACK)
    return ids[np.where(owner >= 0, owner, tracks)].astype(np.int64)  # -1: the NO_TRACK last
