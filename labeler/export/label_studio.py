"""Label Studio pre-annotations: boxes to review in a Label Studio project.

    <out>/tasks.json          a JSON list of tasks, one per image, to import into the project
    <out>/label_config.xml    the labeling config whose RectangleLabels offer the categories

A task is `{"data": {"image": URL, "labeler_id": id}, "predictions": [prediction]}`. The
prediction is made by the function the online API's Label Studio ML backend answers
`/predict` with (labeler.serve.formats.label_studio_prediction): `rectanglelabels` in
percent of the image (as its EXIF orientation shows it, which Label Studio applies too),
the box score on each region, their mean on the prediction, and model_version
`family:model[@revision]`. An image gets the same regions whether it was labeled in a batch
job and imported, or sent to the backend.

URL: the row's `uri` (an s3:// or https URI is what Label Studio's cloud storage and URL
tasks read), or with an `image_url_prefix` that prefix followed by the row id, for images
served elsewhere: `/data/local-files/?d=photos/` for Label Studio's local file serving,
`https://cdn.example.com/photos/` for a web server over the input folder. Behind a web
prefix (`/...`, `http(s)://`) the id is percent-encoded (`my photo #1.jpg` ->
`my%20photo%20%231.jpg`: a `#` or `&` would end the path or the `?d=` value); behind a
cloud storage prefix (`s3://bucket/photos/`) it is the object key as it is.

The list is written as a stream, one task per line, so memory holds one batch of rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from labeler.export.categories import Categories
from labeler.export.coco import json_line
from labeler.export.rows import Row
from labeler.export.target import Target
from labeler.serve.formats import LabelConfig, label_studio_prediction, model_version

TASKS_FILE = "tasks.json"
CONFIG_FILE = "label_config.xml"
# The names the generated config gives its tags, which each region refers to.
IMAGE_TAG, LABELS_TAG = "image", "label"
_CONFIG = LabelConfig(image_name=IMAGE_TAG, image_key=IMAGE_TAG, rectangle=LABELS_TAG)


def label_config_xml(categories: Categories) -> str:
    """A labeling config: the image and a RectangleLabels with every category, in order."""
    labels = "".join(f"\n    <Label value={quoteattr(name)}/>" for name in categories.names)
    return (f'<View>\n  <Image name="{IMAGE_TAG}" value="${IMAGE_TAG}"/>\n'
            f'  <RectangleLabels name="{LABELS_TAG}" toName="{IMAGE_TAG}">{labels}\n'
            f'  </RectangleLabels>\n</View>\n')


def media_url(prefix: str, row_id: str) -> str:
    """The URL of a row's image or video under `prefix` (see the module docstring)."""
    if prefix.startswith(("/", "http://", "https://")):
        return prefix + quote(row_id, safe="/")
    return prefix + row_id


def label_studio_task(row: Row, version: str, image_url_prefix: str | None) -> dict:
    """The Label Studio task of one exported row (see the module docstring)."""
    record = {"width": row.width, "height": row.height, "detections": [
        {"label": b.label, "score": b.score, "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1}
        for b in row.boxes]}
    url = row.uri if image_url_prefix is None else media_url(image_url_prefix, row.id)
    return {"data": {IMAGE_TAG: url, "labeler_id": row.id},
            "predictions": [label_studio_prediction(record, _CONFIG, version)]}


def write_label_studio(rows: Iterable[Row], categories: Categories, target: Target,
                       model: dict, image_url_prefix: str | None) -> tuple[int, int]:
    """label_config.xml, then tasks.json (written last, as the export's main file) ->
    (images, boxes). model: the task's model, model_family and model_revision."""
    version = model_version(model.get("model_family") or "", model.get("model") or "",
                            model.get("model_revision"))
    target.write(CONFIG_FILE, label_config_xml(categories).encode())
    images = boxes = 0
    with target.final(TASKS_FILE) as out:
        out.write(b"[")
        for row in rows:
            images += 1
            boxes += len(row.boxes)
            out.write((b"\n" if images == 1 else b",\n")
                      + json_line(label_studio_task(row, version, image_url_prefix)))
        out.write(b"\n]\n")
    return images, boxes
