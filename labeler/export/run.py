"""`labeler export`: one task of a job's output -> COCO, YOLO, Label Studio or MOT, in two
passes.

    pass 1   read the rows: category order (labels of the spec, then those seen, sorted),
             whether they are video frames (refused where frames would have to be files,
             or tracks where the job made none)
    pass 2   read them again and write the format, copying images where asked (COCO with a
             validation split: once per split, each its own file)

Nothing is written before pass 1 has accepted the export. Both passes read the same rows in
the same order (labeler.export.rows), so ids match between them and between runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from labeler.export.categories import Categories
from labeler.export.coco import FILE_NAME as COCO_FILE
from labeler.export.coco import split_file_name, write_coco
from labeler.export.images import SliceCount, copy_images
from labeler.export.label_studio import TASKS_FILE as LABEL_STUDIO_FILE
from labeler.export.label_studio import write_label_studio
from labeler.export.label_studio_video import write_label_studio_video
from labeler.export.mot import SEQMAP_FILE as MOT_FILE
from labeler.export.mot import write_mot
from labeler.export.rows import (ExportError, JobOutput, Reasons, Row, Tally, TaskFolder, TaskRows,
                                 TrackCount, read_ids)
from labeler.export.slices import SliceOptions
from labeler.export.splits import TRAIN, VAL, split_of
from labeler.export.target import Target
from labeler.export.yolo import DATA_FILE as YOLO_FILE
from labeler.export.yolo import write_yolo

FORMATS = ("coco", "yolo", "label-studio", "mot")
# The smallest slice side: below it a box of a few pixels fills a slice.
MIN_SLICE = 32
# Reasons shown per kind of skipped row in the summary.
TOP_REASONS = 5


@dataclass(frozen=True)
class ExportOptions:
    """What `labeler export` was asked: see docs/export.md."""

    job: str
    format: Literal["coco", "yolo", "label-studio", "mot"]
    out: str
    task: str | None = None
    min_score: float | None = None
    include_not_kept: bool = False
    copy_images: bool = False
    overwrite: bool = False
    val_fraction: float = 0.0  # share of images held out for validation, by id (splits.py)
    image_url_prefix: str | None = None  # label-studio: image URL = prefix + id (else uri)
    slice_size: int | None = None  # coco, yolo: write SIZE x SIZE slices (slices.py)
    slice_overlap: float | None = None  # None: SliceOptions' default, likewise below
    slice_min_visible: float | None = None
    skip_empty_slices: bool = False
    interpolate: bool = False  # mot: a line for every frame between a track's boxes
    ids_file: str | None = None  # only the rows of these ids (`labeler select` writes one)

    def slices(self) -> SliceOptions | None:
        """The slicing asked for, or None."""
        if self.slice_size is None:
            return None
        given = {"overlap": self.slice_overlap, "min_visible": self.slice_min_visible}
        return SliceOptions(self.slice_size, skip_empty=self.skip_empty_slices,
                            **{k: v for k, v in given.items() if v is not None})


@dataclass
class ExportSummary:
    """What an export wrote and left out; `lines()` is what the command prints."""

    options: ExportOptions
    task: TaskFolder
    output: str
    job_finished: bool
    categories: int = 0
    images: int = 0
    boxes: int = 0
    tally: Tally = field(default_factory=Tally)
    copy_failures: Reasons = field(default_factory=Reasons)
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)  # split: (images, boxes)
    sliced: SliceCount = field(default_factory=SliceCount)
    tracks: TrackCount | None = None  # tracked videos (mot, label-studio): what was written
    ids: tuple[int, int] | None = None  # --ids-file: (ids in it, ids that were rows)

    def lines(self) -> list[str]:
        tally, min_score = self.tally, self.options.min_score
        out = [f"task: {self.task.name} ({self.task.kind}), {tally.rows} rows read"]
        if self.ids is not None:
            asked, found = self.ids
            out.append(f"only the ids of {self.options.ids_file}: {found} of its {asked} are "
                       f"rows of this task" + (f" ({asked - found} are not)" if asked > found
                                               else ""))
        if not self.job_finished:
            out.append(f"warning: {self.options.job} has no _SUCCESS: the job did not finish, "
                       f"only its committed shards were exported")
        out.append(f"skipped {tally.errors.total} error rows")
        out += [f"  x{n}: {reason}" for reason, n in tally.errors.top(TOP_REASONS)]
        if tally.not_kept:
            out.append(f"skipped {sum(tally.not_kept.values())} not-kept rows "
                       f"(--include-not-kept exports them): "
                       + ", ".join(f"{kind} x{n}" for kind, n in sorted(tally.not_kept.items())))
        if tally.not_kept_exported:
            out.append(f"exported {tally.not_kept_exported} not-kept rows (--include-not-kept)")
        if min_score is not None:
            out.append(f"dropped {tally.low_score_boxes} boxes under --min-score {min_score}")
        if self.copy_failures.total:
            out.append(f"skipped {self.copy_failures.total} rows whose image could not be "
                       f"exported")
            out += [f"  x{n}: {reason}" for reason, n in self.copy_failures.top(TOP_REASONS)]
        slices = self.options.slices()
        if slices is not None:
            s = self.sliced
            out.append(f"sliced {s.images} images into {s.slices + s.empty_skipped} slices of "
                       f"{slices.size} px (overlap {slices.overlap:g}); dropped "
                       f"{s.boxes_dropped} box parts under {slices.min_visible:g} of their box")
            if slices.skip_empty:
                out.append(f"skipped {s.empty_skipped} slices without a box "
                           f"(--skip-empty-slices)")
        if self.tracks is not None:
            out.append(f"videos: {self.tracks.sequences}; skipped "
                       f"{self.tracks.untracked_boxes} boxes in no track (track_id null)")
            if self.options.interpolate:
                out.append(f"interpolated {self.tracks.interpolated_boxes} boxes on the "
                           f"frames between a track's boxes (--interpolate)")
        out += [f"categories: {self.categories}",
                f"{'frames' if self.tracks is not None else 'images'}: {self.images}, "
                f"boxes: {self.boxes}",
                *(f"  {name}: {n} images, {b} boxes" for name, (n, b) in self.splits.items()),
                f"output: {self.output}"]
        return out


def _check_options(options: ExportOptions) -> None:
    """Options that the format does not take, and values out of range: ExportError."""
    if options.format not in FORMATS:
        raise ExportError(f"unknown format {options.format!r}; valid formats: {', '.join(FORMATS)}")
    if not 0 <= options.val_fraction < 1:
        raise ExportError(f"--val-fraction {options.val_fraction:g}: a share in [0, 1) of the "
                          f"images to hold out for validation")
    if options.format == "label-studio" and (options.copy_images or options.val_fraction):
        raise ExportError("--copy-images and --val-fraction do not apply to label-studio: its "
                          "tasks point at the images (--image-url-prefix) and a project "
                          "reviews them all")
    if options.format == "mot" and (options.copy_images or options.val_fraction
                                    or options.slice_size is not None):
        raise ExportError("--copy-images, --val-fraction and --slice do not apply to mot: its "
                          "sequences are the videos, labeled frame by frame")
    if options.interpolate and options.format != "mot":
        raise ExportError("--interpolate applies to --format mot (Label Studio interpolates "
                          "between keyframes itself)")
    if options.image_url_prefix is not None and options.format != "label-studio":
        raise ExportError("--image-url-prefix applies to --format label-studio only")
    _check_slices(options)


def _check_slices(options: ExportOptions) -> None:
    """--slice and its companions: ExportError naming the flag."""
    if options.slice_size is None:
        companions = (("--slice-overlap", options.slice_overlap is not None),
                      ("--slice-min-visible", options.slice_min_visible is not None),
                      ("--skip-empty-slices", options.skip_empty_slices))
        given = [flag for flag, is_set in companions if is_set]
        if given:
            raise ExportError(f"{given[0]} applies to slices: give --slice SIZE too")
        return
    if options.format == "label-studio":
        raise ExportError("--slice applies to coco and yolo: Label Studio reviews whole images")
    if options.slice_size < MIN_SLICE:
        raise ExportError(f"--slice {options.slice_size}: a slice side of at least {MIN_SLICE} px")
    if options.slice_overlap is not None and not 0 <= options.slice_overlap < 1:
        raise ExportError(f"--slice-overlap {options.slice_overlap:g}: a share in [0, 1) of "
                          f"the slice side")
    if options.slice_min_visible is not None and not 0 < options.slice_min_visible <= 1:
        raise ExportError(f"--slice-min-visible {options.slice_min_visible:g}: a share in "
                          f"(0, 1] of a box's area")


def _check_kinds(folder: TaskFolder, options: ExportOptions, survey: Tally,
                 kinds: set[str]) -> None:
    """What the rows are ("frames" of videos, or "images") against the format: video frames
    are no files, so they go to COCO as entries, and as tracks to MOT and Label Studio when
    the job linked them (`track`)."""
    if "images" in kinds and options.format == "mot":
        raise ExportError(f"task {folder.name!r} labels images; --format mot exports the "
                          f"tracks of a video job (labeler run --media video --track)")
    if "frames" not in kinds:
        return
    if options.format in ("mot", "label-studio") and not survey.tracked:
        also = ("" if options.format == "mot" else
                ", or export the frames as COCO (file_name <video id>#frame=<n>)")
        raise ExportError(f"task {folder.name!r} labels video frames without tracking, so "
                          f"its boxes have no track ids; label the videos with --track (or "
                          f"track: in the task's spec){also}")
    if options.format == "yolo":
        raise ExportError(f"task {folder.name!r} labels video frames, and a YOLO dataset needs "
                          f"an image file per label file; export it as COCO (file_name "
                          f"<video id>#frame=<frame index>)")
    if options.copy_images or options.slice_size is not None:
        flag = "--slice" if options.slice_size is not None else "--copy-images"
        raise ExportError(f"task {folder.name!r} labels video frames, which are no files to "
                          f"copy; export it without {flag}")


def run_export(options: ExportOptions) -> ExportSummary:
    """Export one task of the job output `options.job`; ExportError (a SpecError) when the
    export cannot be done as asked, StorageError when a location cannot be used."""
    _check_options(options)
    job = JobOutput(options.job)
    folder = job.pick(options.task)
    target = Target(options.out)
    target.check_empty(options.overwrite, job.uri)
    ids = read_ids(options.ids_file, ExportError) if options.ids_file is not None else None
    rows = TaskRows(job, folder, options.min_score, options.include_not_kept, ids)

    survey, labels, kinds = Tally(), set(), set()
    for row in rows.scan(survey):
        kinds.add("frames" if row.frame_index is not None else "images")
        labels.update(box.label for box in row.boxes)
    _check_kinds(folder, options, survey, kinds)
    categories = Categories(survey.task_labels, labels)

    target.clear()
    split = options.val_fraction > 0
    main_file = {"yolo": YOLO_FILE, "label-studio": LABEL_STUDIO_FILE, "mot": MOT_FILE}.get(
        options.format, split_file_name(TRAIN) if split else COCO_FILE)
    summary = ExportSummary(options, folder, job_finished=job.finished,
                            categories=len(categories.names), output=target.location(main_file))
    if options.format == "yolo":
        counts = write_yolo(rows.scan(summary.tally), categories, target, summary.copy_failures,
                            options.val_fraction, options.slices(), summary.sliced)
    elif options.format == "mot":
        summary.tracks = write_mot(rows.scan(summary.tally), categories, target,
                                   options.interpolate)
        counts = {"all": (summary.tracks.frames, summary.tracks.boxes)}
    elif options.format == "label-studio" and "frames" in kinds:
        summary.tracks = write_label_studio_video(
            rows.scan(summary.tally), categories, target, folder.model,
            options.image_url_prefix)
        counts = {"all": (summary.tracks.frames, summary.tracks.boxes)}
    elif options.format == "label-studio":
        scanned: Iterable[Row] = rows.scan(summary.tally)
        if ids is not None:
            # Label Studio shows tasks in import order: a review queue (`labeler select`,
            # best first) keeps the file's order. The rows of a selection are held at once.
            scanned = sorted(scanned, key=lambda row: ids[row.id])
        counts = {"all": write_label_studio(scanned, categories, target, folder.model,
                                            options.image_url_prefix)}
    else:
        counts = _write_coco_splits(rows, folder, job, categories, target, options, summary)
    summary.images = sum(n for n, _ in counts.values())
    summary.boxes = sum(b for _, b in counts.values())
    summary.splits = counts if split else {}
    if ids is not None:
        summary.ids = (len(ids), len(rows.ids_found))
    return summary


def _write_coco_splits(rows: TaskRows, folder: TaskFolder, job: JobOutput,
                       categories: Categories, target: Target, options: ExportOptions,
                       summary: ExportSummary) -> dict[str, tuple[int, int]]:
    """annotations.json, or one file per split (a scan of the rows each) -> {split: (images,
    boxes)}; the summary's tally counts the first scan only."""
    info = {"description": f"labeler export of task {folder.name!r} ({folder.kind})",
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "labeler_output": job.uri, "task": folder.name, "task_kind": folder.kind,
            "min_score": options.min_score, "include_not_kept": options.include_not_kept}
    if options.val_fraction == 0:
        splits = {"all": (COCO_FILE, "images", lambda row: True)}
    else:
        splits = {name: (split_file_name(name), f"images/{name}",
                         lambda row, name=name: split_of(row.id, options.val_fraction) == name)
                  for name in (TRAIN, VAL)}
    counts = {}
    for k, (name, (file_name, images, wanted)) in enumerate(splits.items()):
        scanned = (row for row in rows.scan(summary.tally if k == 0 else Tally()) if wanted(row))
        entries = (copy_images(scanned, target, summary.copy_failures,
                               folder_of=lambda row, images=images: images,
                               slices=options.slices(), sliced=summary.sliced)
                   if options.copy_images or options.slice_size is not None
                   else ((row, None) for row in scanned))
        counts[name] = write_coco(entries, categories, target,
                                  {**info, **({"split": name} if name != "all" else {})},
                                  file_name)
    return counts
