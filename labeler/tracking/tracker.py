"""Tracking by detection: links the boxes of a video's labeled frames into tracks.

Boxes in, one track id per box out. No image is looked at, so the same boxes always give
the same tracks. Association is ByteTrack's (Zhang et al. 2022), per label, frame by frame
in time order:

1. each live track of the label predicts its box: its last box moved at constant velocity
   (the change of its box per labeled frame, from its last two boxes) for the frames since;
2. the frame's boxes scored at least `new_track_score` are assigned to the predictions by
   an optimal assignment on IoU (scipy's linear_sum_assignment); a pair with IoU >= `iou`
   continues the track;
3. the tracks left are assigned the same way to the frame's lower-scored boxes;
4. a high-scored box left over starts a track, a lower-scored one stays in none;
5. a track that goes unmatched in more than `max_missed` labeled frames in a row ends.

Tracks of fewer than `min_length` boxes are dropped; the others are numbered 1, 2, ... in
order of their first box (frame, then the box's place in its row).

Steps are labeled frames, not seconds: frames are sampled at a fixed rate, or skipped by
`min_change` because little moved, so a frame skipped that way is not a step in which an
object could have travelled. supervision's ByteTrack does not fit a labeling job: it returns
only the boxes it tracks (a job keeps every box), links boxes across labels, and its Kalman
filter is tuned for 30 fps pedestrian video.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from labeler.config import TrackingSpec

NO_TRACK = 0  # the id of a box in no track; tracks are numbered from 1


@dataclass
class _Track:
    box: np.ndarray  # (4,) its last box, xyxy pixels
    frame: int  # the labeled frame of its last box
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box change per frame
    boxes: list[int] = field(default_factory=list)  # flat indexes of its boxes, in order

    def predicted(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame)

    def extend(self, box: np.ndarray, frame: int, index: int) -> None:
        self.velocity = (box - self.box) / (frame - self.frame)
        self.box, self.frame = box, frame
        self.boxes.append(index)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a (m, 4) with every box of b (n, 4), xyxy: (m, n); 0 where a
    box has no area."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _assign(tracks: list[_Track], boxes: np.ndarray, frame: int,
            min_iou: float) -> list[tuple[int, int]]:
    """(track, box) position pairs of the assignment with the most total IoU among pairs
    of IoU >= min_iou (a pair below it counts as no match, so it never displaces one)."""
    if not tracks or not len(boxes):
        return []
    predicted = np.stack([t.predicted(frame) for t in tracks])
    iou = box_iou(predicted, boxes)
    gain = np.where(iou >= min_iou, iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [(r, c) for r, c in zip(rows.tolist(), cols.tolist()) if gain[r, c] > 0]


def link_tracks(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                frame_starts: np.ndarray, spec: TrackingSpec) -> np.ndarray:
    """Track ids of a video's boxes.

    boxes (N, 4) float xyxy pixels, scores (N,) and labels (N,) int: every box of the
    video's labeled frames, frame after frame in time order; frame_starts (F + 1,): frame
    f's boxes are [frame_starts[f], frame_starts[f + 1]). Returns (N,) int64: each box's
    track id, 1, 2, ... in order of the track's first box, or NO_TRACK.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    new_track_score = spec.new_track_score if spec.new_track_score is not None else -1.0
    live: dict[int, list[_Track]] = {}  # label -> its tracks that may still continue
    done: list[_Track] = []
    for frame in range(len(frame_starts) - 1):
        start, end = int(frame_starts[frame]), int(frame_starts[frame + 1])
        for label in sorted(set(live) | set(labels[start:end].tolist())):
            tracks = live.get(label, [])
            ended = [t for t in tracks if frame - t.frame - 1 > spec.max_missed]
            done.extend(ended)
            tracks = [t for t in tracks if frame - t.frame - 1 <= spec.max_missed]
            mine = start + np.flatnonzero(labels[start:end] == label)
            high = mine[scores[mine] >= new_track_score]
            low = mine[scores[mine] < new_track_score]
            unmatched = list(range(len(tracks)))
            for candidates, may_start in ((high, True), (low, False)):
                waiting = [tracks[k] for k in unmatched]
                pairs = _assign(waiting, boxes[candidates], frame, spec.iou)
                for t, c in pairs:
                    waiting[t].extend(boxes[candidates[c]], frame, int(candidates[c]))
                taken = {c for _, c in pairs}
                unmatched = [unmatched[k] for k in range(len(waiting))
                             if k not in {t for t, _ in pairs}]
                if may_start:
                    tracks += [_Track(boxes[i], frame, boxes=[int(i)])
                               for c, i in enumerate(candidates.tolist()) if c not in taken]
            live[label] = tracks
    done.extend(t for tracks in live.values() for t in tracks)
    ids = np.full(len(boxes), NO_TRACK, dtype=np.int64)
    kept = sorted((t for t in done if len(t.boxes) >= spec.min_length),
                  key=lambda t: t.boxes[0])
    for number, track in enumerate(kept, start=1):
        ids[track.boxes] = number
    return ids
