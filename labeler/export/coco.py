"""COCO detection JSON, written as a stream: `<out>/annotations.json`.

    {"info": {...}, "categories": [...], "images": [...], "annotations": [...]}

The categories are known before the rows are read again (labeler.export.categories), so
the file is written in one pass over the rows: each image entry goes straight to the output
stream, each of its annotations to a local temporary file, appended to the output after the
last image. Memory holds one batch of rows; disk, the annotations once. One entry per line.

images: id (from 1, in row order), file_name, width, height (the EXIF-oriented image, which
the boxes refer to), labeler_id (the row id), uri (where the job read it); video frame rows
add frame_index, timestamp_s and video_id (the video's id). file_name: the row id, or
`<id>#frame=<frame_index>` for a frame; with copied images, their path under the output
(`images/...`); a slice (`--slice`) adds `slice`, its [x0, y0, x1, y1] in the image the
row id names, and its width and height are the slice's. With a validation share
(`--val-fraction`) each split is a file of its own, annotations_train.json and
annotations_val.json (images in `images/train`, `images/val`), ids counted from 1 in each.
annotations: id (from 1), image_id, category_id (from 1), bbox [x, y, w, h] in pixels from
the row's x0, y0, x1, y1, area = w * h, iscrowd 0, score; a box of a tracked video task
(`track`) adds track_id, numbered from 1 over the file in order of first box, as in COCO's
video extensions (TAO): a track id in the job's rows counts within its video only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable

from labeler.export.categories import Categories
from labeler.export.images import ImageFile
from labeler.export.rows import Row
from labeler.export.target import Target

FILE_NAME = "annotations.json"
# Pixels to 3 decimals: float32 boxes of images up to 16k px are exact to ~0.001 px anyway.
COORD_DECIMALS = 3
# Scores to 6 decimals: a float32 in [0, 1] has about 7 significant digits.
SCORE_DECIMALS = 6
# Bytes per copy of the annotations' temporary file into the output.
COPY_CHUNK = 1024**2


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_line(entry: dict) -> bytes:
    """One entry as compact UTF-8 JSON (an element of a list written a line at a time)."""
    return _ENCODER.encode(entry).encode()


def image_entry(image_id: int, row: Row, image: ImageFile | None) -> dict:
    """The `images` entry of a row (see the module docstring)."""
    file_name = image.path if image is not None else row.id
    entry = {"id": image_id, "file_name": file_name, "width": row.width, "height": row.height,
             "labeler_id": row.id, "uri": row.uri}
    if row.frame_index is not None:
        entry.update(file_name=f"{file_name}#frame={row.frame_index}",
                     frame_index=row.frame_index, timestamp_s=row.timestamp_s, video_id=row.id)
    if row.window is not None:
        entry["slice"] = list(row.window)
    return entry


def annotation_entries(first_id: int, image_id: int, row: Row, categories: Categories,
                       tracks: dict[tuple[str, int], int] | None = None) -> list[dict]:
    """The `annotations` entries of a row's boxes, ids from `first_id`. A box in a track
    gets the track's id in the file: `tracks` maps (video id, track id in the video) to it,
    and a track not in it yet is added with the next number from 1."""
    entries = []
    tracks = {} if tracks is None else tracks
    for k, box in enumerate(row.boxes):
        w, h = round(box.x1 - box.x0, COORD_DECIMALS), round(box.y1 - box.y0, COORD_DECIMALS)
        entries.append({"id": first_id + k, "image_id": image_id,
                        "category_id": categories.index(box.label) + 1,
                        "bbox": [round(box.x0, COORD_DECIMALS), round(box.y0, COORD_DECIMALS), w, h],
                        "area": round(w * h, COORD_DECIMALS), "iscrowd": 0,
                        "score": round(box.score, SCORE_DECIMALS)})
        if box.track_id is not None:
            entries[-1]["track_id"] = tracks.setdefault((row.id, box.track_id), len(tracks) + 1)
    return entries


def split_file_name(split: str) -> str:
    """The COCO file of one split (`--val-fraction`): annotations_train.json, ..._val.json."""
    return FILE_NAME.replace(".json", f"_{split}.json")


def write_coco(entries: Iterable[tuple[Row, ImageFile | None]], categories: Categories,
               target: Target, info: dict, file_name: str = FILE_NAME) -> tuple[int, int]:
    """Write `file_name` from (row, copied image or None) pairs -> (images, boxes) written."""
    head = json_line({"info": info, "categories": [
        {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(categories.names)]})
    images = boxes = 0
    tracks: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryFile() as annotations, target.final(file_name) as out:
        out.write(head[:-1] + b',\n"images":[')  # the object stays open for the two arrays
        for row, image in entries:
            images += 1
            out.write((b"\n" if images == 1 else b",\n")
                      + json_line(image_entry(images, row, image)))
            for entry in annotation_entries(boxes + 1, images, row, categories, tracks):
                annotations.write((b"\n" if entry["id"] == 1 else b",\n") + json_line(entry))
            boxes += len(row.boxes)
        out.write(b'\n],\n"annotations":[')
        annotations.seek(0)
        shutil.copyfileobj(annotations, out, COPY_CHUNK)
        out.write(b"\n]}\n")
    return images, boxes
