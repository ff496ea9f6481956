"""The rows a preview shows: one task of a job output, scanned once, sampled by a stable hash.

Sampling. Each row has a key: its id, plus `#frame=N` for a video frame row or `#clip=S` for
a clip row (they share the video's id). A row's rank is the first 8 bytes of
blake2b(f"{seed}:{key}") as an unsigned integer; the sample is the `limit` rows of lowest
rank, shown in rank order. So a rerun shows the same rows in the same order whatever the
order of the files, another seed shows others, and a larger limit shows the same rows and
more. The sample is held in a bounded buffer (Lowest): memory is at most 2 x `limit`
rows, whatever the job's size.

Reading. Files one at a time in name order, READ_BATCH_ROWS rows at a time, only the columns
a preview needs (those an older output lacks are left out). Per batch only `id`,
`frame_index`, `clip_start_s` and `error` are turned into Python objects for every row;
the other columns only for the rows that enter the sample.

What the grid does not show is counted in the scan: error rows (with their reasons, and a
sample of them by the same rank, ERROR_ROWS_LISTED at most), and with `errors_only` the rows
without an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.dataset as pads

from labeler.config import VIDEO_EXTENSIONS
from labeler.export.rows import (READ_BATCH_ROWS, Box, ExportError, JobOutput, Reasons,
                                 TaskFolder, not_parquet)
from labeler.storage import storage_error

# The columns a preview reads.
COLUMNS = ("id", "uri", "width", "height", "detections", "text", "ocr_regions", "error",
           "kept", "filter_reason", "frame_index", "timestamp_s", "clip_start_s", "clip_end_s",
           "video")
# Error rows listed one by one on the page (the lowest ranks); all are counted by reason.
ERROR_ROWS_LISTED = 50


@dataclass(frozen=True)
class OcrLine:
    """A line of OCR text and its quadrilateral: 4 (x, y) corners in pixels of the oriented
    image, clockwise from the top-left."""

    text: str
    quad: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SampledRow:
    """A row of the sample. width, height: the oriented image's (or video frame's) size in
    pixels, which the boxes and quads refer to (None on an error row). frame_index,
    timestamp_s (seconds): set on a video frame row; clip_start_s, clip_end_s (seconds) on a
    clip row; uri is then the video's. from_video: the row comes from a video (a frame or
    clip row, or a video's error row: its `video` column is set or its uri is a video
    file)."""

    rank: int
    key: str
    id: str
    uri: str
    width: int | None
    height: int | None
    boxes: tuple[Box, ...] = ()
    ocr: tuple[OcrLine, ...] = ()
    text: str | None = None
    error: str | None = None
    kept: bool | None = None
    filter_reason: str | None = None
    frame_index: int | None = None
    timestamp_s: float | None = None
    clip_start_s: float | None = None
    clip_end_s: float | None = None
    from_video: bool = False

    @property
    def is_frame(self) -> bool:
        return self.frame_index is not None

    @property
    def is_clip(self) -> bool:
        return self.clip_start_s is not None


def row_key(row_id: str, frame_index: int | None = None, clip_start_s: float | None = None) -> str:
    """The text a row is ranked by: the id, with the frame or clip of a video row."""
    if frame_index is not None:
        return f"{row_id}#frame={frame_index}"
    if clip_start_s is not None:
        return f"{row_id}#clip={clip_start_s!r}"
    return row_id


def rank(key: str, seed: int) -> int:
    """A row's place in the sample for `seed`: an integer in [0, 2^64), the same on every run
    and machine (no Python hash randomisation)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Lowest:
    """The n items of lowest (rank, key) offered so far. Items are appended and, when 2n are
    held, cut back to the n lowest: memory is at most 2n items, O(log n) time per item."""

    def __init__(self, n: int):
        self.n = n
        self._items: list[tuple[int, str, object]] = []
        self._bound: tuple[int, str] | None = None  # the n-th lowest at the last cut

    def wants(self, item_rank: int, key: str) -> bool:
        """Whether an item of this rank could be among the n (decide before building it)."""
        return self.n > 0 and (self._bound is None or (item_rank, key) < self._bound)

    def add(self, item_rank: int, key: str, item: object) -> None:
        if not self.wants(item_rank, key):
            return
        self._items.append((item_rank, key, item))
        if len(self._items) >= 2 * self.n:
            self._cut()

    def _cut(self) -> None:
        self._items.sort(key=lambda entry: entry[:2])
        del self._items[self.n:]
        if len(self._items) == self.n:
            self._bound = self._items[-1][:2]

    def sorted(self) -> list:
        """The n items (or all, when fewer were offered), lowest rank first."""
        self._cut()
        return [item for *_, item in self._items]


@dataclass
class Scan:
    """What one pass over a task folder found. rows: every row read; errors: error rows by
    reason; error_rows: up to ERROR_ROWS_LISTED of them (lowest rank first); sample: the rows
    for the grid (lowest rank first); good_rows: rows without an error."""

    rows: int = 0
    good_rows: int = 0
    errors: Reasons = field(default_factory=Reasons)
    error_rows: list[SampledRow] = field(default_factory=list)
    sample: list[SampledRow] = field(default_factory=list)
    ids_found: set[str] = field(default_factory=set)  # of the ids asked, those read


def pick_task(job: JobOutput, name: str | None) -> TaskFolder:
    """The task folder `name`, or with None the job's only task; ExportError naming the
    choices otherwise. Any task kind can be previewed (boxes, captions, OCR, answers)."""
    if name is not None:
        return job.named(name)
    if len(job.tasks) == 1:
        return job.tasks[0]
    described = ", ".join(f"{t.name} ({t.kind})" for t in job.tasks)
    raise ExportError(f"{len(job.tasks)} tasks in {job.uri!r}: {described}; choose one "
                      f"with --task")


def scan_task(job: JobOutput, folder: TaskFolder, limit: int, seed: int = 0,
              errors_only: bool = False, ids: dict[str, int] | None = None) -> Scan:
    """Read every row of `folder` once and sample it (see the module docstring): the grid
    gets the `limit` lowest-ranked rows without an error, or with errors_only those with one.
    ids: {id: position}: only rows of those ids go to the grid, ranked by position (the order
    asked) instead of the hash. ExportError for a file that is not Parquet, StorageError when
    the output cannot be read."""
    scan = Scan()
    grid, listed = Lowest(limit), Lowest(ERROR_ROWS_LISTED)
    try:
        dataset = pads.dataset(list(folder.files), format="parquet", filesystem=job.fs)
        columns = [c for c in COLUMNS if c in dataset.schema.names]
        for fragment in dataset.get_fragments():  # in the order of `files`
            for batch in fragment.to_batches(schema=dataset.schema, columns=columns,
                                             batch_size=READ_BATCH_ROWS):
                _sample_batch(batch, seed, errors_only, scan, grid, listed, ids)
    except OSError as err:
        raise storage_error(job.uri, "read the job output", err) from None
    except pa.ArrowInvalid as err:
        raise not_parquet(job.uri, err) from None
    scan.sample = grid.sorted()
    scan.error_rows = listed.sorted()
    return scan


def _column(batch: pa.RecordBatch, name: str) -> list:
    if name in batch.schema.names:
        return batch.column(name).to_pylist()
    return [None] * batch.num_rows


def _sample_batch(batch: pa.RecordBatch, seed: int, errors_only: bool, scan: Scan,
                  grid: Lowest, listed: Lowest, ids: dict[str, int] | None = None) -> None:
    row_ids, errors = _column(batch, "id"), _column(batch, "error")
    frames, clips = _column(batch, "frame_index"), _column(batch, "clip_start_s")
    wanted: list[tuple[int, int, str, Lowest]] = []  # (row in batch, rank, key, for whom)
    for i in range(batch.num_rows):
        scan.rows += 1
        error = errors[i]
        if error is None:
            scan.good_rows += 1
        else:
            scan.errors.add(error)
        key = row_key(row_ids[i], frames[i], clips[i])
        row_rank = rank(key, seed)
        grid_rank = row_rank
        if ids is not None:
            grid_rank = ids.get(row_ids[i], -1)
            if grid_rank >= 0:
                scan.ids_found.add(row_ids[i])
        if ((error is not None) == errors_only and grid_rank >= 0
                and grid.wants(grid_rank, key)):
            wanted.append((i, grid_rank, key, grid))
        if error is not None and listed.wants(row_rank, key):
            wanted.append((i, row_rank, key, listed))
    if not wanted:
        return
    indices = sorted({i for i, *_ in wanted})
    by_index = dict(zip(indices, batch.take(pa.array(indices, pa.int64())).to_pylist()))
    for i, row_rank, key, into in wanted:
        into.add(row_rank, key, _sampled(by_index[i], row_rank, key))


def _sampled(values: dict, row_rank: int, key: str) -> SampledRow:
    """A row's values (a dict of the columns read) -> SampledRow."""
    boxes = tuple(Box(d["label"] or "", d["score"], d["x0"], d["y0"], d["x1"], d["y1"],
                      d.get("track_id"))
                  for d in values.get("detections") or [])
    ocr = tuple(OcrLine(r["text"] or "", tuple((r[f"x{k}"], r[f"y{k}"]) for k in range(4)))
                for r in values.get("ocr_regions") or [])
    return SampledRow(
        rank=row_rank, key=key, id=values["id"], uri=values["uri"], width=values.get("width"),
        height=values.get("height"), boxes=boxes, ocr=ocr, text=values.get("text"),
        error=values.get("error"), kept=values.get("kept"),
        filter_reason=values.get("filter_reason"), frame_index=values.get("frame_index"),
        timestamp_s=values.get("timestamp_s"), clip_start_s=values.get("clip_start_s"),
        clip_end_s=values.get("clip_end_s"),
        from_video=(values.get("frame_index") is not None
                    or values.get("clip_start_s") is not None or values.get("video") is not None
                    or PurePosixPath(values["uri"].partition("#")[0]).suffix.lower()
                    in VIDEO_EXTENSIONS))
