"""A YOLO (Ultralytics) detection dataset:

    <out>/images/<id>            the images (copied, see labeler.export.images)
    <out>/labels/<id stem>.txt   one line per box: `class cx cy w h`, normalised to [0, 1]
    <out>/data.yaml              path, train: images, val: images, names: {0: ..., 1: ...}

With a validation share (`--val-fraction`, labeler.export.splits) the images and labels go
one level deeper, `images/train/<id>`, `images/val/<id>` (and `labels/...` alike), and
data.yaml names `images/train` and `images/val`.

Class ids are the categories' positions, from 0. An image with no box gets an empty label
file: a background image to Ultralytics. The labels are written row by row beside their
image, nothing is held for the whole dataset; data.yaml is written last. Without a
validation share, train and val both name `images`.
`path` is the output folder's absolute path; on S3 it is left out, and Ultralytics then
reads the folder holding data.yaml, wherever it is downloaded to.
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from labeler.export.categories import Categories
from labeler.export.images import ImageFile, SliceCount, copy_images
from labeler.export.rows import Reasons, Row
from labeler.export.slices import SliceOptions
from labeler.export.splits import TRAIN, VAL, split_of
from labeler.export.target import Target

DATA_FILE = "data.yaml"
# Normalised coordinates to 6 decimals: 0.001 px on a 1000 px side, as Ultralytics writes them.
DECIMALS = 6


def label_text(row: Row, categories: Categories) -> str:
    """The label file of a row: `class cx cy w h` per box, by the row's width and height
    (the oriented image's, which the boxes refer to), each clipped to [0, 1]."""
    lines = []
    for box in row.boxes:
        x0, x1 = (min(max(v / row.width, 0.0), 1.0) for v in (box.x0, box.x1))
        y0, y1 = (min(max(v / row.height, 0.0), 1.0) for v in (box.y0, box.y1))
        numbers = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
        lines.append(f"{categories.index(box.label)} "
                     + " ".join(f"{v:.{DECIMALS}f}" for v in numbers) + "\n")
    return "".join(lines)


def data_yaml(categories: Categories, path: str | None, split: bool = False) -> str:
    """data.yaml: `path` (omitted when None), the train and val image folders (the same one
    unless `split`), the names."""
    fields = {"path": path} if path is not None else {}
    train, val = (f"images/{TRAIN}", f"images/{VAL}") if split else ("images", "images")
    fields.update(train=train, val=val, names=dict(enumerate(categories.names)))
    note = ("# written by `labeler export`; no path: Ultralytics reads the folder holding this "
            "file\n" if path is None else "# written by `labeler export`\n")
    return note + yaml.safe_dump(fields, sort_keys=False, allow_unicode=True)


def write_yolo(rows: Iterable[Row], categories: Categories, target: Target,
               failures: Reasons, val_fraction: float = 0.0, slices: SliceOptions | None = None,
               sliced: SliceCount | None = None) -> dict[str, tuple[int, int]]:
    """Copy each row's image (or write its slices), write its label file, then data.yaml ->
    {split: (images, boxes)} ({"all": ...} without a validation share). Rows whose image
    cannot be exported go to `failures`. Slices go to their image's split."""
    split = val_fraction > 0

    def folder_of(row: Row) -> str:
        return f"images/{split_of(row.id, val_fraction)}" if split else "images"

    def write_label(row: Row, image: ImageFile) -> None:
        labels = "labels" + image.folder.removeprefix("images")
        target.write(f"{labels}/{image.name.key}.txt", label_text(row, categories).encode())

    counts = {TRAIN: [0, 0], VAL: [0, 0]} if split else {"all": [0, 0]}
    for row, image in copy_images(rows, target, failures, after=write_label,
                                  folder_of=folder_of, slices=slices, sliced=sliced,
                                  label_files=True):
        count = counts[image.folder.removeprefix("images/") if split else "all"]
        count[0] += 1
        count[1] += len(row.boxes)
    with target.final(DATA_FILE) as out:
        out.write(data_yaml(categories, None if target.s3 else target.path, split).encode())
    return {name: (n, b) for name, (n, b) in counts.items()}
