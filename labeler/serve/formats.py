"""Records -> the formats annotation tools read (pure functions, no model, no server).

Label Studio ML backend: a prediction per task, `rectanglelabels` in percent of the image
(x, y, width, height of the top-left corner and size), OCR regions as a `polygon` (percent
points) plus a `textarea` with the same region id, as Label Studio's OCR template expects.
Video tasks (a Video tag and a VideoRectangle) get one `videorectangle` region per track
(labeler.export.label_studio_video), numbered at the frame rate the Video tag plays at.
Interactive pre-annotation: the rectangles a Label Studio user draws with a smart tool
(the request's `context`) become detect-by-example examples (drawn_rectangles).
CVAT (nuclio detector functions): a list of shapes with pixel `points`, `label`, and
`confidence` as a string, the way CVAT's own detector functions answer.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

# Label Studio's tags for the outputs we can fill: boxes with labels, polygons, text.
_RECTANGLE_TAGS = {"rectanglelabels", "rectangle"}
_POLYGON_TAGS = {"polygon", "polygonlabels"}


@dataclass
class LabelConfig:
    """What a Label Studio labeling config asks for: the control tags' names (from_name),
    the image tag's name (to_name) and data key, and the box labels offered."""

    image_name: str = "image"
    image_key: str = "image"
    rectangle: str | None = None
    rectangle_type: str = "rectanglelabels"
    labels: list[str] = field(default_factory=list)
    # Several RectangleLabels on the image (animals: cat, dog; vehicles: car, bus): every
    # label is asked for, and a box goes to the control offering its label.
    rectangle_of: dict[str, str] = field(default_factory=dict)
    # A plain Rectangle with a Labels on the same image (Label Studio's split format): the
    # Labels' name; each box is then two results with one id, the rectangle and its label.
    region_labels: str | None = None
    polygon: str | None = None
    polygon_type: str = "polygon"
    textarea: str | None = None
    # A TextArea not per region is text about the whole image: a caption or an answer.
    textarea_per_region: bool = True
    # Video object tracking: the Video tag's name, data key and frameRate attribute as
    # written ("$fps", "25" or None), and the VideoRectangle's name; `labels` then come
    # from the Labels tag on the video.
    video_name: str = "video"
    video_key: str = "video"
    frame_rate: str | None = None
    video_rectangle: str | None = None


# Characters of a label_config taken (real ones are a few KB): /setup keeps 256 projects'
# configs, which at a body's 20 MiB each would be 5 GiB of ingress memory.
MAX_LABEL_CONFIG_CHARS = 1 << 20


def parse_label_config(xml: str) -> LabelConfig:
    """Label Studio's <View> XML -> LabelConfig. ValueError for XML that does not parse or
    is over MAX_LABEL_CONFIG_CHARS."""
    if len(xml) > MAX_LABEL_CONFIG_CHARS:
        raise ValueError(f"label_config: {len(xml)} characters, over the limit of "
                         f"{MAX_LABEL_CONFIG_CHARS}")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise ValueError(f"label_config is not valid XML: {err}") from None
    config = LabelConfig()
    images = [el for el in root.iter() if el.tag.lower() == "image"]
    # The image the controls label: the one the first box, polygon or text control names
    # in its toName (a config may show several images), else the first.
    controls = [el for el in root.iter()
                if el.tag.lower() in (*_RECTANGLE_TAGS, *_POLYGON_TAGS, "textarea")]
    named = {el.get("name"): el for el in images}
    target = next((named[el.get("toName")] for el in controls if el.get("toName") in named),
                  images[0] if images else None)
    if target is not None:
        config.image_name = target.get("name", config.image_name)
        config.image_key = target.get("value", "$" + config.image_key).lstrip("$")
    video = next((el for el in root.iter() if el.tag.lower() == "video"), None)
    if video is not None:
        config.video_name = video.get("name", config.video_name)
        config.video_key = video.get("value", "$" + config.video_key).lstrip("$")
        config.frame_rate = video.get("frameRate")
    for el in root.iter():
        tag = el.tag.lower()
        if tag == "videorectangle" and config.video_rectangle is None:
            config.video_rectangle = el.get("name")
        elif (tag == "labels" and video is not None and not config.labels
              and config.video_name in (el.get("toName") or "").split(",")):
            config.labels = [lab.get("value") for lab in el if lab.get("value")]
        elif tag in _RECTANGLE_TAGS and _labels_image(el, config, images):
            if config.rectangle is None:
                config.rectangle, config.rectangle_type = el.get("name"), tag
            elif tag != config.rectangle_type:
                continue  # a plain Rectangle beside RectangleLabels: the labelled one fills
            for label in (lab.get("value") for lab in el if lab.get("value")):
                if label not in config.rectangle_of:
                    config.rectangle_of[label] = el.get("name")
                    config.labels.append(label)
        elif (tag == "labels" and video is None and config.region_labels is None
              and config.image_name in (el.get("toName") or "").split(",")):
            config.region_labels = el.get("name")
        elif tag in _POLYGON_TAGS and config.polygon is None:
            config.polygon, config.polygon_type = el.get("name"), tag
        elif tag == "textarea" and config.textarea is None:
            config.textarea = el.get("name")
            config.textarea_per_region = (el.get("perRegion") or "").lower() == "true"
    if config.rectangle_type == "rectangle" and config.region_labels is not None:
        labels = next(el for el in root.iter() if el.get("name") == config.region_labels)
        config.labels = [lab.get("value") for lab in labels if lab.get("value")]
    else:
        config.region_labels = None  # a RectangleLabels carries its own labels
    return config


def _labels_image(control, config: LabelConfig, images: list) -> bool:
    """Whether a control labels the config's image (its toName; with one image or none
    named, any control does)."""
    to_name = control.get("toName")
    return len(images) <= 1 or to_name is None or config.image_name in to_name.split(",")


def video_frame_rate(config: LabelConfig, data: dict, probed_fps: float | None,
                     default: float) -> float:
    """The frame rate the project's Video tag plays a task's video at, which numbers its
    frames: frameRate="$key" reads the task's data (else the video's probed rate), a number
    is that, none is Label Studio's default."""
    attribute = config.frame_rate
    if attribute is None:
        return default
    if attribute.startswith("$"):
        value = data.get(attribute[1:])
        fallback = probed_fps or default
    else:
        value, fallback = attribute, default
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return fallback
    return rate if rate > 0 else fallback


def model_version(family: str, source: str, revision: str | None = None) -> str:
    """Label Studio's model_version of a model: `family:source`, `@revision` when known."""
    version = f"{family}:{source}"
    return f"{version}@{revision}" if revision else version


def _pct(value: float, size: int) -> float:
    return 100.0 * value / size if size else 0.0


def label_studio_prediction(record: dict, config: LabelConfig, model_version: str) -> dict:
    """One record -> one Label Studio prediction {model_version, score, result}."""
    w, h = record.get("width") or 0, record.get("height") or 0
    common = {"to_name": config.image_name, "original_width": w, "original_height": h,
              "image_rotation": 0}
    results, scores = [], []
    if config.rectangle:
        for i, d in enumerate(record.get("detections") or []):
            value = {"x": _pct(d["x0"], w), "y": _pct(d["y0"], h),
                     "width": _pct(d["x1"] - d["x0"], w), "height": _pct(d["y1"] - d["y0"], h),
                     "rotation": 0}
            if config.rectangle_type == "rectanglelabels":
                value["rectanglelabels"] = [d["label"]]
            results.append({"id": f"det{i}",
                            "from_name": config.rectangle_of.get(d["label"], config.rectangle),
                            "type": config.rectangle_type, "value": value, "score": d["score"],
                            **common})
            if config.region_labels:
                results.append({"id": f"det{i}", "from_name": config.region_labels,
                                "type": "labels", "value": {**value, "labels": [d["label"]]},
                                "score": d["score"], **common})
            scores.append(d["score"])
    if config.textarea and not config.textarea_per_region and record.get("text"):
        results.append({"id": "text", "from_name": config.textarea, "type": "textarea",
                        "value": {"text": [record["text"]]}, **common})
    for i, r in enumerate(record.get("ocr_regions") or []):
        points = [[_pct(r[f"x{k}"], w), _pct(r[f"y{k}"], h)] for k in range(4)]
        if config.polygon:
            results.append({"id": f"ocr{i}", "from_name": config.polygon,
                            "type": config.polygon_type,
                            "value": {"points": points, "closed": True}, **common})
        if config.textarea and config.textarea_per_region:
            results.append({"id": f"ocr{i}", "from_name": config.textarea, "type": "textarea",
                            "value": {"points": points, "text": [r["text"]]}, **common})
    prediction = {"model_version": model_version, "result": results}
    if scores:
        prediction["score"] = sum(scores) / len(scores)
    return prediction


# The label of a box drawn with a plain <Rectangle> (it carries none).
DRAWN_BOX_LABEL = "object"


def drawn_rectangles(context, config: LabelConfig) -> list[tuple[str, tuple[float, ...]]]:
    """Label Studio's interactive pre-annotation `context` (the regions drawn with a smart
    tool: {"result": [{"type": "rectanglelabels", "value": {"x", "y", "width", "height",
    "rotation", "rectanglelabels": [label]}}, ...]}) -> (label, (x0, y0, x1, y1) in percent
    of the image) per rectangle of the config's RectangleLabels. ValueError naming what is
    wrong: no rectangle among the regions, a rotated one, or one without a label."""
    results = context.get("result") if isinstance(context, dict) else None
    if not isinstance(results, list):
        raise ValueError("context.result: a list of the regions drawn is required")
    # Split format: a plain rectangle's label is in a `labels` result with its id.
    companion_labels = {region.get("id"): region.get("value", {}).get("labels")
                        for region in results if isinstance(region, dict)
                        and region.get("type") == "labels" and config.region_labels
                        and region.get("from_name") == config.region_labels
                        and isinstance(region.get("value"), dict)}
    drawn = []
    for i, region in enumerate(results):
        value = region.get("value") if isinstance(region, dict) else None
        if not isinstance(value, dict) or region.get("type") not in _RECTANGLE_TAGS:
            continue
        if region.get("from_name", config.rectangle) != config.rectangle:
            continue  # another control's region
        try:
            x, y, w, h = (float(value[key]) for key in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"context.result.{i}.value: x, y, width and height (percent of "
                             f"the image) are required") from None
        if float(value.get("rotation") or 0) != 0:
            raise ValueError(f"context.result.{i}: a rotated rectangle cannot be an example; "
                             f"draw it unrotated")
        labels = value.get("rectanglelabels")
        if region["type"] == "rectanglelabels" and not (isinstance(labels, list) and labels):
            raise ValueError(f"context.result.{i}.value.rectanglelabels: pick the label the "
                             f"box shows")
        if region["type"] == "rectanglelabels":
            label = str(labels[0])
        else:
            picked = companion_labels.get(region.get("id"))
            label = str(picked[0]) if isinstance(picked, list) and picked else DRAWN_BOX_LABEL
        drawn.append((label, (x, y, x + w, y + h)))
    if not drawn:
        raise ValueError("context.result: no rectangle drawn; draw a box around an object to "
                         "find more like it")
    return drawn


def percent_to_pixels(box: tuple[float, ...], width: int, height: int) -> tuple[float, ...]:
    """(x0, y0, x1, y1) in percent of a width x height image -> pixels, clipped to it (a box
    dragged to the edge may pass it by rounding)."""
    x0, y0, x1, y1 = box
    return (min(max(x0, 0.0), 100.0) * width / 100.0, min(max(y0, 0.0), 100.0) * height / 100.0,
            min(max(x1, 0.0), 100.0) * width / 100.0, min(max(y1, 0.0), 100.0) * height / 100.0)


def cvat_shapes(record: dict) -> list[dict]:
    """One record -> CVAT detector shapes: rectangles (points x0, y0, x1, y1 in pixels) with
    label and confidence; OCR regions as polygons labelled "text" with the text as attribute
    (OCR gives no score, so confidence is left out rather than invented)."""
    shapes = [{"type": "rectangle", "label": d["label"], "confidence": str(d["score"]),
               "points": [d["x0"], d["y0"], d["x1"], d["y1"]]}
              for d in record.get("detections") or []]
    shapes += [{"type": "polygon", "label": "text",
                "points": [r[f"{axis}{k}"] for k in range(4) for axis in ("x", "y")],
                "attributes": [{"name": "text", "value": r["text"]}]}
               for r in record.get("ocr_regions") or []]
    return shapes
