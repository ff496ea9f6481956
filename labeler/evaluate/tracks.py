"""`labeler eval --mot`: a tracked video task's tracks against MOTChallenge ground truth,
per video and in all: MOTA, IDF1, ID switches, false positives, misses (mot_metrics).

    1. the ground truth's sequences (mot_truth), each the truth of the job's video whose id
       is its folder
    2. one pass over the task's rows, video by video: each row of a video with ground truth
       is a labeled frame (frame_index + 1), compared with the ground truth's objects on that
       frame
    3. CLEAR and identity scores per video, added up over the videos

Only the frames the job labeled are evaluated (objects on the frames between sampled ones
are not counted as missed), and only boxes in a track (what `labeler export --format mot`
writes; a box with track_id null is left out and counted). With classes in the ground
truth (labels.txt), a box matches only objects of its label's class (names compared as
`labeler eval` does: case and runs of spaces aside; `--match LABEL=CLASS` pairs others);
boxes of labels that are no class are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from labeler.evaluate.ground_truth import EvalError
from labeler.evaluate.mot_metrics import FrameTracks, TrackScores, score_video
from labeler.evaluate.mot_truth import MotSequence, load_mot_truth
from labeler.schemas.labels import label_key
from labeler.export.rows import JobOutput, Row, Tally, TaskRows, videos_of
from labeler.json_report import check_report_path, write_report

MOT_IOU = 0.5  # MOTChallenge's: a box matches an object it overlaps by IoU >= 0.5


@dataclass(frozen=True)
class TrackEvalOptions:
    """What `labeler eval --mot` was asked (docs/eval.md): output: the job output; mot: the
    ground-truth folder (local or s3://); task: the task folder (None: the only one with
    boxes); iou: the least IoU of a match; match: label -> class name, for names that
    differ; json: a local file for the figures."""

    output: str
    mot: str
    task: str | None = None
    iou: float = MOT_IOU
    match: dict[str, str] = field(default_factory=dict)
    json: str | None = None


@dataclass
class TrackEvalSummary:
    """figures: see docs/eval.md; lines(): what the command prints."""

    figures: dict

    def lines(self) -> list[str]:
        f = self.figures
        out = [f"output: {f['output']}, task: {f['task']} ({f['kind']})",
               f"ground truth: {f['truth']} (MOT): {len(f['videos']) + len(f['without_video'])}"
               f" videos",
               f"videos evaluated: {len(f['videos'])}; frames evaluated (the job's labeled "
               f"frames): {f['frames']}"]
        if f["without_video"]:
            out.append(f"  {len(f['without_video'])} ground-truth videos the task did not "
                       f"label: " + ", ".join(f["without_video"][:3]))
        if f["untracked_boxes"] or f["boxes_without_class"]:
            out.append(f"boxes left out: {f['untracked_boxes']} in no track, "
                       f"{f['boxes_without_class']} of labels that are no ground-truth class")
        width = max(len("video"), *(len(v["video"]) for v in f["videos"]), len("all"))
        out.append(f"  {'video':<{width}} {'objects':>8} {'boxes':>7} {'MOTA':>7} "
                   f"{'IDF1':>6} {'IDSW':>5} {'FP':>6} {'FN':>6} {'MOTP':>6}")
        for v in [*f["videos"], {"video": "all", **f["all"]}]:
            out.append(f"  {v['video']:<{width}} {v['objects']:>8} {v['boxes']:>7} "
                       f"{_num(v['mota'], 7)} {_num(v['idf1'], 6)} {v['id_switches']:>5} "
                       f"{v['false_positives']:>6} {v['misses']:>6} {_num(v['motp'], 6)}")
        return out


def _num(value: float | None, width: int) -> str:
    return f"{'-' if value is None else f'{value:.3f}':>{width}}"


def run_track_eval(options: TrackEvalOptions) -> TrackEvalSummary:
    """The figures of `options.output`'s tracked task against the ground truth in
    `options.mot` (module docstring), written to `options.json` too when set."""
    if not 0 < options.iou <= 1:
        raise EvalError(f"--iou {options.iou:g}: the least IoU of a match, in (0, 1]")
    if options.json is not None:
        check_report_path(options.json, EvalError)
    truth = load_mot_truth(options.mot)
    job = JobOutput(options.output)
    folder = job.pick(options.task)
    tally = Tally()
    counts = {"frames": 0, "untracked_boxes": 0, "boxes_without_class": 0}
    videos: dict[str, TrackScores] = {}
    for rows in videos_of(TaskRows(job, folder).scan(tally)):
        if rows[0].frame_index is None:
            raise EvalError(f"task {folder.name!r} labels images; --mot compares the tracks "
                            f"of a video job with MOT ground truth")
        sequence = truth.get(rows[0].id)
        if sequence is None:
            continue
        classes = ({label_key(c): k for k, c in enumerate(sequence.classes, start=1)}
                   if sequence.classes is not None else None)  # class name -> id
        frames = [_frame(row, sequence, classes, counts, options.match) for row in rows]
        counts["frames"] += len(frames)
        videos[rows[0].id] = score_video(frames, options.iou)
    if not tally.tracked:
        raise EvalError(f"task {folder.name!r} was labeled without tracking, so its boxes "
                        f"have no track ids; label the videos with --track")
    if not videos:
        raise EvalError(f"no video of task {folder.name!r} has ground truth: its sequences "
                        f"are {', '.join(sorted(truth)[:5])}, named by the folder that holds "
                        f"gt/gt.txt, which must be the video's id in the job")
    total = sum(videos.values(), TrackScores())
    figures = {"output": job.uri, "task": folder.name, "kind": folder.kind,
               "truth": options.mot, "iou": options.iou, **counts,
               "without_video": sorted(set(truth) - set(videos)),
               "videos": [{"video": name, **s.figures()} for name, s in sorted(videos.items())],
               "all": total.figures()}
    if options.json is not None:
        write_report(options.json, figures, EvalError)
    return TrackEvalSummary(figures)


def _frame(row: Row, sequence: MotSequence, classes: dict[str, int] | None, counts: dict,
           match: dict[str, str]) -> FrameTracks:
    """A labeled frame against its ground truth; boxes left out are counted. A box's class
    is the one (classes: label_key of a class name -> its id; None: no classes) named like
    its label, or like what `match` pairs its label with."""
    objects = sequence.frames.get(row.frame_index + 1, [])
    boxes, ids, box_classes = [], [], []
    for box in row.boxes:
        if box.track_id is None:
            counts["untracked_boxes"] += 1
            continue
        cls = 0 if classes is None else classes.get(label_key(match.get(box.label, box.label)))
        if cls is None:
            counts["boxes_without_class"] += 1
            continue
        boxes.append((box.x0, box.y0, box.x1, box.y1))
        ids.append(box.track_id)
        box_classes.append(cls)
    return FrameTracks(
        truth_boxes=np.array([b for _, _, b in objects], dtype=float).reshape(-1, 4),
        truth_ids=np.array([o for o, _, _ in objects], dtype=np.int64),
        truth_classes=np.array([c for _, c, _ in objects], dtype=np.int64),
        boxes=np.array(boxes, dtype=float).reshape(-1, 4),
        ids=np.array(ids, dtype=np.int64), classes=np.array(box_classes, dtype=np.int64))
