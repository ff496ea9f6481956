"""YOLO (Ultralytics) ground truth for `labeler eval --yolo DIR`.

A YOLO detection dataset (what Ultralytics trains on, Roboflow exports and `labeler export
--format yolo` writes): `DIR/data.yaml` names the classes (`names: [cat, dog]` or `{0: cat,
1: dog}`), and each `<stem>.txt` in a `labels` folder holds one line per box, `class cx cy
w h`, each in [0, 1] of the image's width or height. Ultralytics finds an image's labels by
putting `labels` for the last `images` folder of its path, so the folders are `DIR/labels/`
(`labels/train/`, ...; labeler's and CVAT's exports) or `DIR/<split>/labels/` (Roboflow's:
`train/labels/`, `valid/labels/`). An image's file is its label file's path under DIR less
that `labels` folder and `.txt` (`labels/train/cat.txt` and `train/labels/cat.txt` are both
`train/cat`); a row matches it when its id, less its image suffix, is that path
(`train/cat` is row `train/cat.jpg`), else by a base name unique on both sides.

YOLO stores no image sizes: the boxes become pixels with the width and height of the
matched row (the oriented image, which labeler's boxes refer to), so a size mismatch
cannot be seen here, as it can with COCO. Each label file is an image of the ground truth,
an empty one an image without objects; so is each image in an `images` folder without a
label file (Ultralytics' and Roboflow's background images: no file, no objects), named alike
by its path less that `images` folder and its suffix.
"""

from __future__ import annotations

import math
import posixpath

import pyarrow.fs as pafs
import yaml

from labeler.config import IMAGE_EXTENSIONS
from labeler.evaluate.ground_truth import EvalError, GroundTruth
from labeler.storage import filesystem_for, storage_error

DATA_FILES = ("data.yaml", "dataset.yaml")
LABELS_FOLDER = "labels"
IMAGES_FOLDER = "images"
# How far outside [0, 1] a normalised coordinate may be: writers round (6 decimals) and some
# do not clip; further out is a broken file, not rounding.
SLACK = 0.01


def load_yolo_ground_truth(uri: str) -> GroundTruth:
    """Read and check the YOLO dataset at `uri` (a local folder or s3:// prefix) -> a
    GroundTruth with normalized boxes (GroundTruth.for_sizes). EvalError naming the file
    and line when it is not one, StorageError when it cannot be read."""
    fs, root = filesystem_for(uri.rstrip("/"))
    root = root.rstrip("/")
    where = f"--yolo {uri!r}"
    try:
        names = _names(fs, root, where)
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        prefix = f"{root}/"
        paths = sorted(f.path[len(prefix):] for f in fs.get_file_info(selector)
                       if f.type == pafs.FileType.File)
        files = [(key.removesuffix(".txt"), path) for path in paths if path.endswith(".txt")
                 and (key := _without_folder(path, LABELS_FOLDER)) is not None]
        backgrounds = _background_images(paths, {key for key, _ in files})
        if not files and not backgrounds:
            raise EvalError(f"{where}: no label files in a {LABELS_FOLDER}/ folder (a YOLO "
                            f"dataset holds {LABELS_FOLDER}/<image stem>.txt or <split>/"
                            f"{LABELS_FOLDER}/<image stem>.txt beside data.yaml)")
        images, annotations = {}, []
        for image_id, (key, path) in enumerate(files, start=1):
            images[image_id] = {"id": image_id, "file_name": key}
            with fs.open_input_stream(prefix + path) as f:
                text = f.read().decode("utf-8", errors="replace")
            for line_no, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    annotations.append(_box(line, names, image_id, len(annotations) + 1,
                                            f"{where}: {path} line {line_no}"))
        for image_id, key in enumerate(backgrounds, start=len(images) + 1):
            images[image_id] = {"id": image_id, "file_name": key}
    except OSError as err:
        raise storage_error(uri, "read the ground truth", err) from None
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(names)]
    dataset = {"images": list(images.values()), "categories": categories,
               "annotations": annotations}
    return GroundTruth(uri, dataset, {c["id"]: c["name"] for c in categories}, images,
                       flag="--yolo", normalized=True)


def _without_folder(path: str, folder: str) -> str | None:
    """`path` (under the dataset folder) less its last parent folder named `folder`
    (Ultralytics' rule: labels/train/x.txt and train/labels/x.txt are train/x.txt); None
    when no parent folder is so named."""
    parts = path.split("/")
    parents = parts[:-1]
    if folder not in parents:
        return None
    k = len(parents) - 1 - parents[::-1].index(folder)
    return "/".join(parts[:k] + parts[k + 1:])


def _background_images(paths: list[str], label_keys: set[str]) -> list[str]:
    """Of `paths` (the files under the dataset folder), the images in an images folder that
    no label file names (by their key less the suffix, or whole), as those keys, sorted."""
    found = []
    for path in paths:
        name = _without_folder(path, IMAGES_FOLDER)
        if name is None:
            continue
        stem, suffix = posixpath.splitext(name)
        if suffix.lower() in IMAGE_EXTENSIONS and stem not in label_keys and name not in label_keys:
            found.append(stem)
    return sorted(set(found))  # a.jpg and a.png are one image to Ultralytics' labels


def _names(fs: pafs.FileSystem, root: str, where: str) -> list[str]:
    """The class names of data.yaml, by class id from 0."""
    for name in DATA_FILES:
        try:
            with fs.open_input_stream(f"{root}/{name}") as f:
                data = yaml.safe_load(f.read())
            break
        except FileNotFoundError:
            continue
        except yaml.YAMLError as err:
            raise EvalError(f"{where}: {name} is not YAML: {err}") from None
    else:
        raise EvalError(f"{where}: no {' or '.join(DATA_FILES)} (a YOLO dataset's class names)")
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):
            raise EvalError(f"{where}: data.yaml names must number the classes 0..N-1, got "
                            f"{sorted(names)}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise EvalError(f"{where}: data.yaml needs `names`, a list of class names or a "
                        f"mapping from class id to name")
    return names


def _box(line: str, names: list[str], image_id: int, ann_id: int, where: str) -> dict:
    """One label line `class cx cy w h` -> a COCO annotation whose bbox is still
    normalized [cx, cy, w, h] (GroundTruth.for_sizes makes it pixels)."""
    fields = line.split()
    try:
        class_id, numbers = int(fields[0]), [float(v) for v in fields[1:]]
    except (ValueError, IndexError):
        raise EvalError(f"{where}: expected `class cx cy w h`, got {line.strip()!r}") from None
    if len(numbers) != 4:
        # More numbers is a segment (polygon) label: eval compares boxes.
        raise EvalError(f"{where}: expected `class cx cy w h` (a box, not a polygon), got "
                        f"{len(numbers) + 1} fields")
    if not 0 <= class_id < len(names):
        raise EvalError(f"{where}: class {class_id} is not in data.yaml's names "
                        f"(0..{len(names) - 1})")
    if not all(math.isfinite(v) and -SLACK <= v <= 1 + SLACK for v in numbers):
        raise EvalError(f"{where}: cx cy w h must be in [0, 1] of the image size, got "
                        f"{' '.join(fields[1:])}")
    return {"id": ann_id, "image_id": image_id, "category_id": class_id + 1, "bbox": numbers,
            "iscrowd": 0, "area": numbers[2] * numbers[3]}
