"""How good a job's boxes are on images someone labeled by hand (`labeler eval`,
docs/eval.md): COCO AP per category, and the score threshold with the best F1, ready to paste
as a detect task's `label_thresholds`.

    ground_truth.py  the COCO file, checked; which ground-truth image a row is
    metrics.py       pycocotools' COCOeval, and the best-F1 threshold from its matching
    run.py           options, the one pass over the task's rows, the table, the JSON file
    mot_truth.py     MOTChallenge ground truth of videos (`--mot`)
    mot_metrics.py   MOTA and IDF1 of one video's tracks
    tracks.py        `--mot`: the pass over a tracked video task's rows, the table
"""

from labeler.evaluate.ground_truth import EvalError
from labeler.evaluate.run import DEFAULT_WORST, EvalOptions, EvalSummary, run_eval

__all__ = ["DEFAULT_WORST", "EvalError", "EvalOptions", "EvalSummary", "run_eval"]
