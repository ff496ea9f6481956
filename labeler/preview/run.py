"""`labeler preview`: a sample of one task of a job's output, drawn, on a static HTML page.

    1. the task folder (labeler.export.rows.JobOutput: the same checks and errors as export)
    2. one scan of its rows: the sample and the error counts (sample.py)
    3. per sampled row, on LOAD_THREADS threads: its image or video frame (load.py), its
       boxes and OCR lines drawn at MAX_SIDE px at most (draw.py), `<out>/images/<name>.jpg`
    4. `<out>/index.html` (page.py)

A row whose image cannot be shown is an entry of the page with the reason, not a failure.
Bad options or a bad job output raise SpecError (the CLI exits 2 with the message).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from labeler.config import SpecError
from labeler.export.rows import JobOutput, TaskFolder, read_ids
from labeler.preview.draw import MAX_SIDE, annotate, jpeg_bytes
from labeler.preview.load import Loaded, Unavailable, load_image, load_video_rows
from labeler.preview.page import PREVIEW_MARK, Entry, PageInfo, render_page
from labeler.preview.sample import SampledRow, Scan, pick_task, scan_task
from labeler.storage import is_s3

PAGE_FILE = "index.html"
IMAGES_FOLDER = "images"
# Rows loaded and drawn at once: reads from S3 wait tens of ms each, decoding and resizing
# release the GIL; each thread holds one decoded image.
LOAD_THREADS = 4
# Error reasons printed in the summary.
TOP_REASONS = 5
# Characters of a row key kept in its image's file name (a hash keeps names apart).
NAME_CHARS = 80


class PreviewError(SpecError):
    """A preview that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class PreviewOptions:
    """What `labeler preview` was asked (docs/preview.md). output: the job output folder or
    s3:// prefix; out: a local folder for index.html and images/; limit: rows shown;
    min_score: boxes under it are hidden; seed: picks the sample; errors: show error rows
    instead of the others; ids_file: a local text file of row ids, one a line (what `labeler
    eval --worst-ids` writes): show those rows, in that order, instead of a sample."""

    output: str
    out: str
    task: str | None = None
    limit: int = 48
    min_score: float | None = None
    seed: int = 0
    errors: bool = False
    ids_file: str | None = None


@dataclass
class PreviewSummary:
    """What a preview showed; `lines()` is what the command prints."""

    options: PreviewOptions
    task: TaskFolder
    finished: bool
    scan: Scan
    page: str
    entries: list[Entry] = field(default_factory=list)
    ids: dict[str, int] | None = None  # the ids asked (ids_file), by position

    @property
    def shown(self) -> int:
        return len(self.entries)

    @property
    def without_image(self) -> int:
        return sum(1 for e in self.entries if e.image is None)

    def lines(self) -> list[str]:
        scan, options = self.scan, self.options
        out = [f"task: {self.task.name} ({self.task.kind}), {scan.rows} rows scanned"]
        if not self.finished:
            out.append(f"warning: {options.output} has no _SUCCESS: the job did not finish, "
                       f"its committed shards were previewed")
        pool = (f"{scan.errors.total} error rows" if options.errors
                else f"{scan.good_rows} rows without an error")
        if self.ids is None:
            out.append(f"shown: {self.shown} of {pool} (seed {options.seed})")
        else:
            missing = len(self.ids) - len(scan.ids_found)
            out.append(f"shown: {self.shown} of the {len(self.ids)} ids of {options.ids_file}, "
                       f"from the {pool}" + (f"; {missing} ids are no row of this task"
                                             if missing else ""))
        if self.without_image:
            out.append(f"  {self.without_image} shown without an image (the reason is on "
                       f"the page)")
        out.append(f"errors: {scan.errors.total} rows")
        out += [f"  x{n}: {reason}" for reason, n in scan.errors.top(TOP_REASONS)]
        out.append(f"page: {self.page}")
        return out


def image_name(row: SampledRow) -> str:
    """The file name of a row's drawn image: its key (id, frame or clip) with characters
    other than letters, digits, '-' and '_' replaced by '_', at most NAME_CHARS of
    them, then a hash of the key (two keys never share a name) and '.jpg'."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", row.key).strip("_-")[-NAME_CHARS:] or "row"
    digest = hashlib.blake2b(row.key.encode(), digest_size=4).hexdigest()
    return f"{slug}-{digest}.jpg"


def _check_options(options: PreviewOptions) -> Path:
    """The output folder, checked; PreviewError for bad options."""
    if options.limit < 1:
        raise PreviewError(f"--limit {options.limit}: the number of rows to show, at least 1")
    if options.min_score is not None and not 0 <= options.min_score <= 1:
        raise PreviewError(f"--min-score {options.min_score:g}: a box score in [0, 1]")
    if is_s3(options.out):
        raise PreviewError(f"--out {options.out!r}: the page is written to a local folder, "
                           f"to open in a browser (the job output may be on S3)")
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise PreviewError(f"--out {options.out!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_preview(out / PAGE_FILE):
        # Its index.html would be replaced and its images/*.jpg deleted.
        raise PreviewError(f"--out {options.out!r} is not empty and is no earlier preview "
                           f"(an {PAGE_FILE} written by labeler preview); choose an empty "
                           f"or new folder")
    return out


def _is_preview(page: Path) -> bool:
    """Whether `page` is an index.html that labeler preview wrote (its head has the mark)."""
    try:
        with page.open(encoding="utf-8", errors="replace") as f:
            return PREVIEW_MARK in f.read(4096)
    except OSError:  # none, or not a readable file
        return False


def _prepare(out: Path) -> Path:
    """Make <out>/images, emptied of the JPEGs of an earlier preview; its path."""
    images = out / IMAGES_FOLDER
    try:
        images.mkdir(parents=True, exist_ok=True)
        for old in images.iterdir():
            if old.is_file() and old.suffix == ".jpg":
                old.unlink()
    except OSError as err:
        raise PreviewError(f"cannot write the preview to {str(out)!r}: {err}") from None
    return images


def _entry(row: SampledRow, min_score: float | None) -> Entry:
    boxes = tuple(b for b in row.boxes if min_score is None or b.score >= min_score)
    return Entry(row, boxes=boxes, hidden_boxes=len(row.boxes) - len(boxes))


def _draw(entry: Entry, loaded: Loaded | Unavailable, images: Path) -> None:
    """Draw the entry's row on its loaded pixels and write the JPEG; or note the reason."""
    if isinstance(loaded, Unavailable):
        entry.problem = f"image not shown: {loaded}"
        return
    row = entry.row
    drawable = loaded.note is None
    image = annotate(loaded.pixels, loaded.width, loaded.height,
                     entry.boxes if drawable else (), row.ocr if drawable else (), MAX_SIDE)
    name = image_name(row)
    try:
        (images / name).write_bytes(jpeg_bytes(image))
    except OSError as err:
        raise PreviewError(f"cannot write {images / name}: {err}") from None
    entry.image = f"{IMAGES_FOLDER}/{name}"
    entry.problem = loaded.note


def _work(entries: list[Entry], images: Path) -> list[Callable[[], None]]:
    """One job per image row, one per video (its rows' frames decoded in one go)."""
    jobs: list[Callable[[], None]] = []
    videos: dict[str, list[Entry]] = {}
    for entry in entries:
        row = entry.row
        if row.is_frame or row.is_clip:
            videos.setdefault(row.uri, []).append(entry)
        elif row.from_video:
            entry.problem = ("a video's error row: it names no frame to show")
        else:
            jobs.append(lambda entry=entry: _draw(entry, _load(entry.row), images))
    for uri, group in videos.items():
        def video_job(uri=uri, group=group) -> None:
            for entry, loaded in zip(group, load_video_rows(uri, [e.row for e in group])):
                _draw(entry, loaded, images)
        jobs.append(video_job)
    return jobs


def _load(row: SampledRow) -> Loaded | Unavailable:
    try:
        return load_image(row, MAX_SIDE)
    except Unavailable as err:
        return err


def run_preview(options: PreviewOptions) -> PreviewSummary:
    """Write the preview of one task of `options.output` to `options.out` (see the module
    docstring); ExportError / PreviewError (SpecErrors) when it cannot be done as asked,
    StorageError when the job output cannot be read."""
    out = _check_options(options)
    ids = (read_ids(options.ids_file, PreviewError) if options.ids_file is not None
           else None)
    job = JobOutput(options.output)
    folder = pick_task(job, options.task)
    scan = scan_task(job, folder, options.limit, options.seed, options.errors, ids)
    images = _prepare(out)
    entries = [_entry(row, options.min_score) for row in scan.sample]
    with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="preview") as pool:
        for done in [pool.submit(job) for job in _work(entries, images)]:
            done.result()  # errors writing the preview propagate
    info = PageInfo(job=job.uri, finished=job.finished, task=folder.name, kind=folder.kind,
                    model=folder.model, rows=scan.rows, good_rows=scan.good_rows,
                    errors=scan.errors, error_rows=scan.error_rows, limit=options.limit,
                    seed=options.seed, min_score=options.min_score, errors_only=options.errors,
                    ids_file=options.ids_file)
    page = out / PAGE_FILE
    staged = out / f".{PAGE_FILE}.tmp"
    try:
        staged.write_text(render_page(info, entries), encoding="utf-8")
        os.replace(staged, page)
    except OSError as err:
        raise PreviewError(f"cannot write {page}: {err}") from None
    return PreviewSummary(options, folder, job.finished, scan, str(page), entries, ids)
