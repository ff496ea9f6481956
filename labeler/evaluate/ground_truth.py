"""COCO ground truth for `labeler eval`: the file, checked, and which of its images a job's
row is.

A COCO detection file (instances_*.json, what CVAT, Label Studio, Roboflow and
`labeler export --format coco` write) holds `images` [{id, file_name, width, height}],
`categories` [{id, name}] and `annotations` [{id, image_id, category_id, bbox [x, y, w, h]
in pixels, area, iscrowd}]. Only what evaluation needs is required; a missing `area` or
`iscrowd` is filled in (area = w * h) as pycocotools needs them. Annotations are numbered
1..N whatever their `id`: pycocotools takes a matched ground-truth id of 0 for "no match",
and files numbering from 0 (or with string ids) are common.

Matching rows to images: a row's `id` is its path relative to the job's input root, and an
image's `file_name` is usually relative to the images folder, so they are compared first
whole, then, for images left unmatched, by base name when that base name is unique among
both the images and the rows (`train/cat.jpg` against `cat.jpg`).
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass

from labeler.config import SpecError
from labeler.storage import filesystem_for, storage_error


class EvalError(SpecError):
    """An evaluation that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class GroundTruth:
    """Checked ground truth. dataset: the COCO dict as pycocotools takes it (annotations
    completed); names: category id -> name; images: image id -> its entry; flag: the option
    it came from, for messages. normalized: the boxes are YOLO's, in [0, 1] of an image
    size the ground truth does not give (images have no width / height): `for_sizes`
    makes them pixels once the rows give the sizes."""

    uri: str
    dataset: dict
    names: dict[int, str]
    images: dict[int, dict]
    flag: str = "--coco"
    normalized: bool = False

    def for_sizes(self, sizes: dict[int, tuple[int, int]]) -> dict:
        """The COCO dict to evaluate: as it is, or with YOLO's boxes in pixels of the
        (width, height) of each image in `sizes` (the others are not evaluated)."""
        if not self.normalized:
            return self.dataset
        images = [{**img, "width": sizes[i][0], "height": sizes[i][1]}
                  for i, img in self.images.items() if i in sizes]
        annotations = []
        for ann in self.dataset["annotations"]:
            if ann["image_id"] not in sizes:
                continue
            width, height = sizes[ann["image_id"]]
            cx, cy, w, h = ann["bbox"]
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append({**ann, "bbox": box, "area": box[2] * box[3]})
        return {**self.dataset, "images": images, "annotations": annotations}


def load_ground_truth(uri: str) -> GroundTruth:
    """Read and check the COCO file at `uri` (local or s3://). EvalError naming the field
    when it is not a COCO detection file, StorageError when it cannot be read."""
    fs, path = filesystem_for(uri)
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        raise EvalError(f"--coco {uri!r}: no such file") from None
    except OSError as err:
        raise storage_error(uri, "read the ground truth", err) from None
    try:
        dataset = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvalError(f"--coco {uri!r} is not JSON: {err}") from None
    return GroundTruth(uri, *_checked(uri, dataset))


def _checked(uri: str, dataset) -> tuple[dict, dict[int, str], dict[int, dict]]:
    where = f"--coco {uri!r}"
    if not isinstance(dataset, dict):
        raise EvalError(f"{where}: a COCO file is a JSON object with images, categories and "
                        f"annotations")
    for key in ("images", "categories", "annotations"):
        if not isinstance(dataset.get(key), list):
            raise EvalError(f"{where}: `{key}` is missing or not a list (a COCO detection file "
                            f"has images, categories and annotations)")
    images = {}
    for k, image in enumerate(dataset["images"]):
        _require(where, f"images[{k}]", image, {"id": int, "file_name": str})
        for key in ("width", "height"):
            value = image.get(key)
            if value is not None and (not _is_number(value, int) or value < 1):
                raise EvalError(f"{where}: images[{k}].{key} must be a whole number of "
                                f"pixels, got {value!r}")
        images[image["id"]] = image
    names = {}
    for k, category in enumerate(dataset["categories"]):
        _require(where, f"categories[{k}]", category, {"id": int, "name": str})
        names[category["id"]] = category["name"]
    annotations = []
    for k, ann in enumerate(dataset["annotations"]):
        field = f"annotations[{k}]"
        _require(where, field, ann, {"image_id": int, "category_id": int, "bbox": list})
        bbox = ann["bbox"]
        if (len(bbox) != 4 or not all(_is_number(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise EvalError(f"{where}: {field}.bbox must be [x, y, width, height] in pixels "
                            f"(finite numbers, width and height 0 or more), got {bbox!r}")
        if ann["image_id"] not in images:
            raise EvalError(f"{where}: {field}.image_id {ann['image_id']} is not an image's id")
        if ann["category_id"] not in names:
            raise EvalError(f"{where}: {field}.category_id {ann['category_id']} is not a "
                            f"category's id")
        area = ann.get("area", bbox[2] * bbox[3])
        if not _is_number(area) or area < 0:
            raise EvalError(f"{where}: {field}.area must be a number of square pixels, 0 or "
                            f"more, got {area!r}")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):  # also true, false (bool is an int) and 1.0
            raise EvalError(f"{where}: {field}.iscrowd must be 0 or 1, got {iscrowd!r}")
        annotations.append({**ann, "id": k + 1, "area": area, "iscrowd": int(iscrowd)})
    return ({"images": list(images.values()), "categories": dataset["categories"],
             "annotations": annotations}, names, images)


def _is_number(value, kind: type = float) -> bool:
    """A finite JSON number (`kind` int: a whole one); not a bool, string or null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and (kind is float or float(value).is_integer())


_KINDS = {int: "an integer", str: "a string", list: "a list"}


def _require(where: str, field: str, entry, types: dict[str, type]) -> None:
    if not isinstance(entry, dict):
        raise EvalError(f"{where}: {field} is not an object")
    for key, type_ in types.items():
        value = entry.get(key)
        # bool is an int to Python; an id of `true` is a broken file, not image 1.
        if not isinstance(value, type_) or isinstance(value, bool):
            raise EvalError(f"{where}: {field}.{key} is missing or not {_KINDS[type_]} "
                            f"(got {value!r})")


class ImageMatcher:
    """Which ground-truth image a row is: by `id` == file_name, else by base name when
    that base name is unique among the images and among the rows seen (see the module
    docstring). Feed every row id with `see`, then call `resolve`. drop_suffix: the file
    names have no image suffix (YOLO label files' paths), so row ids lose theirs."""

    def __init__(self, images: dict[int, dict], drop_suffix: bool = False):
        self.drop_suffix = drop_suffix
        self.by_name = {_normal(img["file_name"]): image_id for image_id, img in images.items()}
        base_counts: dict[str, int] = {}
        for name in self.by_name:
            base = posixpath.basename(name)
            base_counts[base] = base_counts.get(base, 0) + 1
        self.by_base = {posixpath.basename(name): image_id
                        for name, image_id in self.by_name.items()
                        if base_counts[posixpath.basename(name)] == 1}
        self.exact: dict[str, int] = {}
        self.row_bases: dict[str, list[str]] = {}

    def see(self, row_id: str) -> bool:
        """Note a row id; True when it may be a ground-truth image (keep its row)."""
        name = _normal(row_id)
        # Less its suffix, or whole: a YOLO export keeps a suffix Ultralytics does not read
        # in the label's name (x.gif -> labels/x.gif.txt).
        names = (posixpath.splitext(name)[0], name) if self.drop_suffix else (name,)
        for name in names:
            if name in self.by_name:
                self.exact[row_id] = self.by_name[name]
                return True
        for name in names:
            base = posixpath.basename(name)
            if base in self.by_base:
                self.row_bases.setdefault(base, []).append(row_id)
                return True
        return False

    def resolve(self) -> dict[str, int]:
        """row id -> image id, for every row matched: exact names, then unique base names
        of images no exact name took. An image is matched by one row at most."""
        matched = dict(self.exact)
        taken = set(matched.values())
        for base, row_ids in self.row_bases.items():
            image_id = self.by_base[base]
            if len(row_ids) == 1 and image_id not in taken:
                matched[row_ids[0]] = image_id
                taken.add(image_id)
        return matched


def _normal(name: str) -> str:
    """A file name as compared: forward slashes, no leading './'."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name
