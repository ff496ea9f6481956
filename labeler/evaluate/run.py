"""`labeler eval`: a task's boxes against COCO or YOLO ground truth, per category.

    1. the ground truth (ground_truth.load_ground_truth, or yolo_truth's for a YOLO
       dataset, whose boxes become pixels of the matched rows' sizes) and the job's task with boxes
       (labeler.export.rows.JobOutput.pick: the same choice and errors as export)
    2. one pass over the task's rows, keeping only those that may be ground-truth images
       (ImageMatcher), so memory follows the ground truth, not the job
    3. rows to images, labels to categories; images whose row has another size are left out
    4. metrics.evaluate (pycocotools), then the table, the suggested `label_thresholds` and,
       with --json, the same figures as a JSON file

Labels and categories match by name, compared without case and with runs of spaces as one
(`Traffic  Light` is `traffic light`); `--match LABEL=CATEGORY` pairs others. Bad options, a
bad ground-truth file or nothing to compare raise EvalError (the CLI exits 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from labeler.evaluate.ground_truth import EvalError, GroundTruth, ImageMatcher, load_ground_truth
from labeler.evaluate.metrics import (IOU_THRESHOLDS, CategoryScores, Detection, ImageErrors,
                                      evaluate)
from labeler.evaluate.yolo_truth import load_yolo_ground_truth
from labeler.export.rows import JobOutput, Row, Tally, TaskRows
from labeler.json_report import check_report_path, write_report
from labeler.schemas.labels import label_key

# Image names quoted in a message, of those that did not match or differ in size.
EXAMPLES = 3
# Images listed with the most false and missed boxes, the ones to look at first.
DEFAULT_WORST = 10


@dataclass(frozen=True)
class EvalOptions:
    """What `labeler eval` was asked (docs/eval.md). output: the job output folder or s3://
    prefix; coco: the ground-truth COCO file, or yolo: a YOLO dataset folder (exactly one;
    local or s3://); task: the task folder (None:
    the only one with boxes); iou: where the best-F1 threshold is found, one of 0.5, 0.55,
    ..., 0.95; match: label -> category name, for names that differ; include_not_kept:
    pseudo-label rows under the image threshold are evaluated too; worst: images listed
    with the most errors at the best-F1 thresholds; worst_ids: a local text file for their
    row ids, one a line (`labeler preview --ids-file` draws them); json: a local file."""

    output: str
    coco: str | None = None
    task: str | None = None
    iou: float = 0.5
    match: dict[str, str] = field(default_factory=dict)
    include_not_kept: bool = False
    worst: int = DEFAULT_WORST
    worst_ids: str | None = None
    json: str | None = None
    yolo: str | None = None


@dataclass
class EvalSummary:
    """figures: see docs/eval.md (`--json`); lines(): what the command prints."""

    figures: dict

    def lines(self) -> list[str]:
        f = self.figures
        images = f["images"]
        out = [f"output: {f['output']}, task: {f['task']} ({f['kind']})",
               f"ground truth: {f['truth']} ({f['truth_format']}): "
               f"{images['ground_truth']} images, "
               f"{len(f['categories']) + len(f['categories_not_asked'])} categories"]
        out.append(f"images evaluated: {images['evaluated']} of {images['ground_truth']}; "
                   f"{images['without_row']} without a labeled row")
        if images["other_size"]:
            out.append(f"  {images['other_size']} left out, their row has another size: "
                       + "; ".join(images["other_size_examples"]))
        rows = f["rows"]
        out.append(f"rows named like ground-truth images: {rows['rows']}, error rows among "
                   f"them: {rows['error_rows']}"
                   + (f", not kept (pseudo-label): {rows['not_kept']}" if rows["not_kept"] else ""))
        out += _table(f["categories"], f["iou"])
        if f["labels_without_category"]:
            out.append("labels with no ground-truth category (their boxes are not evaluated): "
                       + ", ".join(f["labels_without_category"]))
        if f["categories_not_asked"]:
            out.append("ground-truth categories no label asks for (not evaluated): "
                       + ", ".join(f["categories_not_asked"]))
        if f["label_thresholds"]:
            # repr-exact values: an unrounded midpoint must not print rounded across a score.
            pairs = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}"
                              for k, v in f["label_thresholds"].items())
            note = ("" if f["kind"] == "detect" else
                    "  (per-label thresholds are a detect option; for this task, "
                    "`labeler export --min-score`)")
            out.append(f"best F1 at IoU {f['iou']:g} as a spec's label_thresholds (score > "
                       f"value):{note}")
            out.append(f"  label_thresholds: {{{pairs}}}")
        if f["worst"]:
            out.append(f"images with the most errors at those thresholds (--worst "
                       f"{f['worst_asked']}):")
            out += [f"  {w['file_name']}: {w['false_boxes']} false, {w['missed']} missed "
                    f"({w['kept']} boxes kept, {w['truth']} in truth)" for w in f["worst"]]
        return out


def _table(categories: list[dict], iou: float) -> list[str]:
    if not categories:
        return []
    width = max(len("category"), *(len(c["category"]) for c in categories))
    f1 = f"F1@{iou:g}"
    out = [f"  {'category':<{width}} {'truth':>7} {'boxes':>7} {'AP':>6} {'AP50':>6} "
           f"{f1:>7} {'score>=':>8} {'prec':>6} {'recall':>6}  labels"]
    for c in categories:
        cells = [_num(c["ap"]), _num(c["ap50"]), _num(c["best_f1"], 7),
                 _num(c["best_threshold"], 8), _num(c["best_precision"]), _num(c["best_recall"])]
        out.append(f"  {c['category']:<{width}} {c['ground_truth']:>7} {c['detections']:>7} "
                   + " ".join(cells) + "  " + ", ".join(c["labels"]))
    out.append(f"  mean over {len([c for c in categories if c['ap'] is not None])} categories "
               f"with boxes: AP {_num_plain(_mean(categories, 'ap'))}, "
               f"AP50 {_num_plain(_mean(categories, 'ap50'))}")
    return out


def _num(value: float | None, width: int = 6) -> str:
    return f"{'-' if value is None else f'{value:.3f}':>{width}}"


def _num_plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean(categories: list[dict], key: str) -> float | None:
    values = [c[key] for c in categories if c[key] is not None]
    return sum(values) / len(values) if values else None


def _check_options(options: EvalOptions) -> None:
    if (options.coco is None) == (options.yolo is None):
        raise EvalError("give the ground truth as one of --coco FILE (COCO JSON) or --yolo DIR "
                        "(a YOLO dataset: data.yaml and labels/)")
    if options.worst < 0:
        raise EvalError(f"--worst {options.worst}: the number of images listed, 0 or more")
    if options.iou not in IOU_THRESHOLDS:
        raise EvalError(f"--iou {options.iou:g}: one of COCO's IoU thresholds "
                        f"{', '.join(f'{t:g}' for t in IOU_THRESHOLDS)}")
    for flag, path in (("--json", options.json), ("--worst-ids", options.worst_ids)):
        if path is not None:
            check_report_path(path, EvalError, flag)


def run_eval(options: EvalOptions) -> EvalSummary:
    """The figures of `options.output`'s task against its ground truth (module docstring),
    written to `options.json` too when set."""
    _check_options(options)
    truth = (load_ground_truth(options.coco) if options.coco is not None
             else load_yolo_ground_truth(options.yolo))
    job = JobOutput(options.output)
    folder = job.pick(options.task)
    tally = Tally()
    matcher = ImageMatcher(truth.images, drop_suffix=truth.normalized)
    candidates: dict[str, Row] = {}
    rows = TaskRows(job, folder, include_not_kept=options.include_not_kept)
    for row in rows.scan(tally, wanted=matcher.see):
        if row.frame_index is not None:
            raise EvalError(f"task {folder.name!r} holds video frame rows: eval compares "
                            f"image rows with COCO ground truth")
        candidates[row.id] = row
    matched = matcher.resolve()
    if not matched:
        raise EvalError(_nothing_matched(truth, list(candidates) or _some_ids(job, folder)))
    rows, other_size = _same_size(truth, {candidates[r]: image for r, image in matched.items()
                                          if r in candidates})
    if not rows:
        unlabeled = len(matched) - len(other_size)
        raise EvalError(
            f"no ground-truth image is a labeled row of this task of the same size: "
            f"{len(matched)} images are named by rows; {unlabeled} of those rows are error "
            f"rows" + ("" if options.include_not_kept else " or pseudo-label rows not kept")
            + (f", {len(other_size)} have another size ("
               + "; ".join(other_size[:EXAMPLES]) + ")" if other_size else ""))
    labels = _labels(tally, rows)
    categories = _categories(truth, labels, options.match)
    if not categories:
        raise EvalError(f"no label of task {folder.name!r} is a ground-truth category: labels "
                        f"{', '.join(labels) or 'none'}; categories "
                        f"{', '.join(truth.names.values())} (pair them with --match "
                        f"LABEL=CATEGORY)")
    asked = list(dict.fromkeys(categories.values()))
    order = [c for c in truth.names if c in asked]  # the ground truth's category order
    detections = [Detection(image_id, categories[box.label], box.score,
                            (box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0))
                  for row, image_id in rows.items() for box in row.boxes
                  if box.label in categories]
    sizes = {image_id: (row.width, row.height) for row, image_id in rows.items()}
    dataset = truth.for_sizes(sizes)
    scores, errors = evaluate(dataset, sorted(rows.values()), order, detections, options.iou)
    figures = _figures(options, job, folder, truth, tally, rows, other_size, labels, categories,
                       scores)
    figures["worst_asked"] = options.worst
    figures["worst"] = _worst(truth, {image_id: row.id for row, image_id in rows.items()},
                              errors, options.worst)
    if options.json is not None:
        write_report(options.json, figures, EvalError)
    if options.worst_ids is not None:
        try:
            with open(options.worst_ids, "w", encoding="utf-8") as f:
                f.writelines(f"{w['id']}\n" for w in figures["worst"])
        except OSError as err:
            raise EvalError(f"cannot write --worst-ids {options.worst_ids!r}: {err}") from None
    return EvalSummary(figures)


def _worst(truth: GroundTruth, row_ids: dict[int, str], errors: list[ImageErrors],
           count: int) -> list[dict]:
    """The `count` images with the most false and missed boxes (at least one), most first,
    then by file name."""
    wrong = [e for e in errors if e.false_boxes + e.missed]
    wrong.sort(key=lambda e: (-(e.false_boxes + e.missed), truth.images[e.image_id]["file_name"]))
    return [{"file_name": truth.images[e.image_id]["file_name"], "id": row_ids[e.image_id],
             "kept": e.kept, "truth": e.truth, "false_boxes": e.false_boxes,
             "missed": e.missed} for e in wrong[:count]]


def _some_ids(job: JobOutput, folder) -> list[str]:
    """A few row ids of the task, for the message when no row matched."""
    for batch in TaskRows(job, folder).batches(["id"]):
        return batch.column("id").to_pylist()[:EXAMPLES]
    return []


def _nothing_matched(truth: GroundTruth, row_ids: list[str]) -> str:
    names = [img["file_name"] for img in list(truth.images.values())[:EXAMPLES]]
    return (f"no ground-truth image is a labeled row of this task: images are matched by "
            f"file_name against the row id (the path under the job's input) or, failing that, "
            f"by a base name unique on both sides; file names: {names}, row ids: {row_ids} "
            f"(error rows are not labeled rows)")


def _same_size(truth: GroundTruth, rows: dict[Row, int]) -> tuple[dict[Row, int], list[str]]:
    """The rows whose image has the row's size (or no size in the ground truth), and a
    description of each left out: boxes in pixels of another size would not be comparable."""
    kept, other = {}, []
    for row, image_id in rows.items():
        image = truth.images[image_id]
        size = (image.get("width"), image.get("height"))
        if None in size or size == (row.width, row.height):
            kept[row] = image_id
            continue
        why = ("width and height swapped: EXIF orientation applied on one side only"
               if size == (row.height, row.width) else "")
        other.append(f"{image['file_name']} is {size[0]}x{size[1]}, its row "
                     f"{row.width}x{row.height}" + (f" ({why})" if why else ""))
    return kept, other


def _labels(tally: Tally, rows: dict[Row, int]) -> list[str]:
    """The task's labels in order: those of its parameters, then others its boxes carry."""
    seen = dict.fromkeys(tally.task_labels)
    for row in rows:
        seen.update(dict.fromkeys(box.label for box in row.boxes))
    return list(seen)


def _categories(truth: GroundTruth, labels: list[str], match: dict[str, str]) -> dict[str, int]:
    """label -> category id, by name (label_key) or by `match`; EvalError for a --match
    naming a label or category that is not there, or two categories of one name."""
    by_key: dict[str, int] = {}
    for category_id, name in truth.names.items():
        if label_key(name) in by_key:
            raise EvalError(f"{truth.flag} {truth.uri!r}: two categories are named {name!r} "
                            f"(case and spaces aside); labels could not tell them apart")
        by_key[label_key(name)] = category_id
    for label, category in match.items():
        if label not in labels:
            raise EvalError(f"--match {label}={category}: the task has no label {label!r} "
                            f"(its labels: {', '.join(labels) or 'none'})")
        if label_key(category) not in by_key:
            raise EvalError(f"--match {label}={category}: no ground-truth category "
                            f"{category!r} (categories: {', '.join(truth.names.values())})")
    return {label: by_key[label_key(match.get(label, label))] for label in labels
            if label_key(match.get(label, label)) in by_key}


def _figures(options: EvalOptions, job: JobOutput, folder, truth: GroundTruth, tally: Tally,
             rows: dict[Row, int], other_size: list[str], labels: list[str],
             categories: dict[str, int], scores: list[CategoryScores]) -> dict:
    per_category = []
    for s in scores:
        own = [label for label in labels if categories.get(label) == s.category_id]
        per_category.append({"category": truth.names[s.category_id], "labels": own,
                             "ground_truth": s.ground_truth, "detections": s.detections,
                             "ap": s.ap, "ap50": s.ap50, "best_f1": s.best_f1,
                             "best_threshold": s.best_threshold,
                             "best_precision": s.best_precision, "best_recall": s.best_recall})
    thresholds = {}
    for s in scores:
        own = [label for label in labels if categories.get(label) == s.category_id]
        # Under no label's own threshold: boxes below it were never made, so not evaluated.
        job_lows = [t for label in own if (t := job_threshold(tally, label)) is not None]
        value = _threshold_above(s, max(job_lows, default=None))
        if value is not None:
            thresholds.update(dict.fromkeys(own, value))
    asked = set(categories.values())
    return {
        "output": job.uri, "task": folder.name, "kind": folder.kind, "truth": truth.uri,
        "truth_format": truth.flag.removeprefix("--"),
        "iou": options.iou,
        "images": {"ground_truth": len(truth.images), "evaluated": len(rows),
                   "without_row": len(truth.images) - len(rows) - len(other_size),
                   "other_size": len(other_size), "other_size_examples": other_size[:EXAMPLES]},
        "rows": {"rows": tally.rows, "error_rows": tally.errors.total,
                 "not_kept": sum(tally.not_kept.values())},
        "categories": per_category,
        "mean": {"ap": _mean(per_category, "ap"), "ap50": _mean(per_category, "ap50")},
        "labels_without_category": [label for label in labels if label not in categories],
        "categories_not_asked": [name for c, name in truth.names.items() if c not in asked],
        "label_thresholds": thresholds,
    }


def job_threshold(tally: Tally, label: str) -> float | None:
    """The lowest score threshold the task's rows were made with for `label` (its
    label_thresholds entry, else `threshold`); None when the parameters hold neither."""
    found = []
    for parameters in tally.parameters:
        value = (parameters.get("label_thresholds") or {}).get(label, parameters.get("threshold"))
        if isinstance(value, (int, float)):
            found.append(float(value))
    return min(found, default=None)


def _threshold_above(s: CategoryScores, job_low: float | None) -> float | None:
    """A threshold t such that `score > t` (how a job thresholds) keeps exactly the boxes
    scoring at least s.best_threshold: halfway to the next lower score, rounded to 4
    decimals when that keeps it between the two; with no lower score (every box is kept),
    halfway to the job's own threshold `job_low` (None: no suggestion)."""
    if s.best_threshold is None:
        return None
    low = s.next_score if s.next_score is not None else job_low
    if low is None or low >= s.best_threshold:
        return None
    middle = (s.best_threshold + low) / 2
    rounded = round(middle, 4)
    return rounded if low < rounded < s.best_threshold else middle
