"""What linking a video's boxes into tracks (spec `track`, labeler.tracking) costs, and how
well it keeps objects apart, on synthetic detections with known identities.

A scene: OBJECTS boxes of 3 labels, 40-120 px, each moving at its own constant velocity in
a 1920x1080 frame (bouncing off the edges), with the detector's faults added: each box
jitters by 2% of its side, is missed in MISS_RATE of the frames, and each frame has FALSE
boxes at random places. Velocities are drawn per frame step, so the same scene stands for a
slow scene sampled often or a fast one sampled rarely (`--speed`, px per labeled frame).

Prints, per case:
  link      link_tracks over the video's boxes: ms per hour of video at the case's sampling
            (1 fps: 3,600 labeled frames), and boxes per second on one core
  shard     add_track_ids over a written shard's Arrow rows (4 such videos): the cost the
            job's sink adds when it commits a shard, per video hour
  quality   tracks per object (1.0: every object kept one id; more: fragmented), the share
            of each track's boxes that belong to its main object (purity; 1.0: no id
            switches), and the false boxes left in no track with new_track_score 0.5

    .venv/bin/python benchmarks/tracking.py [--frames 3600] [--objects 20] [--buffers 0.5,1.5]

--buffers sweeps `track.buffer` (the second round's growth): larger keeps fast objects in
one track, at some purity in crowded scenes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import pyarrow as pa

from labeler.config import TrackingSpec
from labeler.schemas.record import RECORD_SCHEMA
from labeler.tracking import NO_TRACK, add_track_ids, link_tracks

WIDTH, HEIGHT = 1920, 1080
LABELS = ["person", "car", "bicycle"]
MISS_RATE = 0.1
FALSE = 2  # false boxes a frame, scored 0.1-0.45 (real ones 0.5-0.95)


def scene(frames: int, objects: int, speed: float, seed: int = 0):
    """(boxes (N, 4), scores (N,), labels (N,), frame_starts (F + 1,), truth (N,): the
    object of each box, -1 for a false one)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(40, 120, (objects, 2))
    position = rng.uniform(0, 1, (objects, 2)) * ([WIDTH, HEIGHT] - size)
    angle = rng.uniform(0, 2 * np.pi, objects)
    velocity = speed * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    label = rng.integers(0, len(LABELS), objects)
    boxes, scores, labels, truth, starts = [], [], [], [], [0]
    for _ in range(frames):
        position += velocity
        for axis, limit in ((0, WIDTH), (1, HEIGHT)):  # bounce off the frame's edges
            out = (position[:, axis] < 0) | (position[:, axis] + size[:, axis] > limit)
            velocity[out, axis] *= -1
            position[:, axis] = np.clip(position[:, axis], 0, limit - size[:, axis])
        seen = rng.uniform(size=objects) > MISS_RATE
        jitter = rng.normal(0, 0.02, (objects, 4)) * np.tile(size, 2)
        frame = np.concatenate([position, position + size], axis=1) + jitter
        fake_xy = rng.uniform(0, 1, (FALSE, 2)) * [WIDTH - 80, HEIGHT - 80]
        fake = np.concatenate([fake_xy, fake_xy + 60], axis=1)
        boxes += [frame[seen], fake]
        scores += [rng.uniform(0.5, 0.95, seen.sum()), rng.uniform(0.1, 0.45, FALSE)]
        labels += [label[seen], rng.integers(0, len(LABELS), FALSE)]
        truth += [np.flatnonzero(seen), np.full(FALSE, -1)]
        starts.append(starts[-1] + seen.sum() + FALSE)
    return (np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels),
            np.array(starts), np.concatenate(truth))


def quality(ids: np.ndarray, truth: np.ndarray) -> tuple[float, float, int]:
    """(tracks per object, purity, false boxes in no track)."""
    real = truth >= 0
    tracked = real & (ids != NO_TRACK)
    per_object = [len(set(ids[tracked & (truth == k)].tolist()))
                  for k in np.unique(truth[real])]
    main = 0
    for track in np.unique(ids[tracked]):
        main += np.bincount(truth[tracked & (ids == track)]).max()
    return (float(np.mean(per_object)), main / max(tracked.sum(), 1),
            int(((truth < 0) & (ids == NO_TRACK)).sum()))


def shard(boxes, scores, labels, starts, videos: int) -> pa.Table:
    """A shard's rows of `videos` copies of the video, as the sink commits them."""
    rows = []
    for v in range(videos):
        for f in range(len(starts) - 1):
            a, b = starts[f], starts[f + 1]
            rows.append({
                "id": f"v{v}.mp4", "uri": f"/v/v{v}.mp4", "width": WIDTH, "height": HEIGHT,
                "task": "detect", "task_name": "detect", "model": "m", "model_family": "owlv2",
                "parameters": "{}", "frame_index": f,
                "detections": [{"label": LABELS[labels[i]], "score": float(scores[i]),
                                "x0": float(boxes[i, 0]), "y0": float(boxes[i, 1]),
                                "x1": float(boxes[i, 2]), "y1": float(boxes[i, 3])}
                               for i in range(a, b)]})
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=3600, help="labeled frames a video")
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--speeds", default="5,20,40", help="px an object moves a frame")
    parser.add_argument("--buffers", default="0.5",
                        help="track.buffer values to compare; none: no buffered round")
    args = parser.parse_args()
    print(f"command: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"{args.frames} labeled frames, {args.objects} objects of 40-120 px, "
          f"{MISS_RATE:.0%} missed, {FALSE} false boxes a frame")
    hours = args.frames / 3600
    cases = [(float(speed), None if buffer == "none" else float(buffer))
             for speed in args.speeds.split(",") for buffer in args.buffers.split(",")]
    for speed, buffer in cases:
        spec = TrackingSpec(new_track_score=0.5, buffer=buffer)
        boxes, scores, labels, starts, truth = scene(args.frames, args.objects, speed)
        t0 = time.perf_counter()
        ids = link_tracks(boxes, scores, labels, starts, spec)
        link_s = time.perf_counter() - t0
        per_object, purity, false_untracked = quality(ids, truth)
        table = shard(boxes, scores, labels, starts, videos=4)
        t0 = time.perf_counter()
        add_track_ids(table, spec)
        shard_s = time.perf_counter() - t0
        shown = "none" if buffer is None else f"{buffer:g}"
        print(f"speed {speed:g} px/frame, buffer {shown}: link "
              f"{link_s * 1000 / hours:.0f} ms per video hour "
              f"at 1 fps ({len(boxes) / link_s:,.0f} boxes/s); shard "
              f"{shard_s * 1000 / (4 * hours):.0f} ms per video hour; tracks per object "
              f"{per_object:.2f}, purity {purity:.3f}, false boxes in no track "
              f"{false_untracked / (truth < 0).sum():.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
