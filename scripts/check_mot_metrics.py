"""Check labeler's MOTA, MOTP, IDF1 and ID switches (labeler.evaluate.mot_metrics) against
TrackEval's CLEAR and Identity metrics on 30 random scenes: moving objects with misses,
false boxes, jitter and swapped ids. Prints the largest difference (0 up to float rounding).

TrackEval is not a dependency (its PyPI fork needs OpenCV and matplotlib); its metric
classes import without them:

    .venv/bin/pip download --no-deps trackeval==1.3.0 -d /tmp/te
    .venv/bin/pip install --no-deps --target /tmp/te_site /tmp/te/trackeval-1.3.0-*.whl
    PYTHONPATH=/tmp/te_site .venv/bin/python scripts/check_mot_metrics.py
"""

from __future__ import annotations

import numpy as np
from trackeval.metrics import CLEAR, Identity

from labeler.evaluate.mot_metrics import FrameTracks, score_video
from labeler.tracking.tracker import box_iou

FRAMES, OBJECTS, SIDE = 40, 6, 30


def scene(seed: int) -> list[FrameTracks]:
    """Objects moving at random velocities; the tracker misses 15% of them, adds up to 2
    false boxes a frame, jitters its boxes and swaps two ids in 10% of the frames."""
    rng = np.random.default_rng(seed)
    position = rng.uniform(0, 300, (OBJECTS, 2))
    velocity = rng.normal(0, 4, (OBJECTS, 2))
    tracker_of = np.arange(OBJECTS) + 10
    frames = []
    for _ in range(FRAMES):
        position += velocity
        present = rng.uniform(size=OBJECTS) > 0.1
        truth = np.concatenate([position, position + SIDE], axis=1)[present]
        objects = np.flatnonzero(present)
        if rng.uniform() < 0.1:
            a, b = rng.choice(OBJECTS, 2, replace=False)
            tracker_of[[a, b]] = tracker_of[[b, a]]
        seen = rng.uniform(size=len(objects)) > 0.15
        false_xy = rng.uniform(0, 300, (rng.integers(0, 3), 2))
        boxes = np.concatenate([truth[seen] + rng.normal(0, 4, (seen.sum(), 4)),
                                np.concatenate([false_xy, false_xy + SIDE], axis=1)])
        ids = np.concatenate([tracker_of[objects[seen]],
                              100 + rng.integers(0, 5, len(false_xy))])
        _, first = np.unique(ids, return_index=True)  # an id once a frame
        keep = np.sort(first)
        frames.append(FrameTracks(truth, objects, np.zeros(len(objects), int), boxes[keep],
                                  ids[keep], np.zeros(len(keep), int)))
    return frames


def trackeval_data(frames: list[FrameTracks]) -> dict:
    """The sequence as TrackEval's metrics take it: ids renumbered from 0, IoU matrices."""
    truth_ids = sorted({int(i) for f in frames for i in f.truth_ids})
    tracker_ids = sorted({int(i) for f in frames for i in f.ids})
    return {
        "num_timesteps": len(frames), "num_gt_ids": len(truth_ids),
        "num_tracker_ids": len(tracker_ids),
        "num_gt_dets": sum(len(f.truth_ids) for f in frames),
        "num_tracker_dets": sum(len(f.ids) for f in frames),
        "gt_ids": [np.array([truth_ids.index(int(i)) for i in f.truth_ids], int)
                   for f in frames],
        "tracker_ids": [np.array([tracker_ids.index(int(i)) for i in f.ids], int)
                        for f in frames],
        "similarity_scores": [box_iou(f.truth_boxes, f.boxes) for f in frames],
    }


def main() -> None:
    largest = 0.0
    for seed in range(30):
        frames = scene(seed)
        data = trackeval_data(frames)
        clear = CLEAR({"PRINT_CONFIG": False}).eval_sequence(data)
        identity = Identity({"PRINT_CONFIG": False}).eval_sequence(data)
        ours = score_video(frames)
        pairs = [(ours.mota, clear["MOTA"]), (ours.motp, clear["MOTP"]),
                 (ours.id_switches, clear["IDSW"]), (ours.matches, clear["CLR_TP"]),
                 (ours.idf1, identity["IDF1"]), (ours.idtp, identity["IDTP"])]
        largest = max(largest, *(abs(a - b) for a, b in pairs))
        if seed == 0:
            print("seed 0 (ours, TrackEval): MOTA, MOTP, IDSW, TP, IDF1, IDTP:",
                  [(round(float(a), 6), round(float(b), 6)) for a, b in pairs])
    print(f"largest difference over 30 scenes: {largest:.3g}")


if __name__ == "__main__":
    main()
