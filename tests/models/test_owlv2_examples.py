"""OWLv2 detect-by-example with examples drawn in the image itself (ImageInput.examples):
against the documented image-guided usage, batch-invariant, and the patch choice."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Owlv2ForObjectDetection, Owlv2Processor

from labeler.config import TaskSpec
from labeler.models import owlv2
from labeler.models.base import Example, ExampleImage, ImageInput
from labeler.models.owlv2 import Owlv2ExampleDetector, example_patch, unit_box
from labeler.serve.config import ServedModel
from labeler.testing.samples import synthetic_image
from test_owlv2_ground_and_example import _assert_same, reference_example

THRESHOLD = 0.3
SIZES = [(200, 60), (50, 200), (96, 96), (47, 33)]


@pytest.fixture(scope="module")
def query_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("query") / "red_mug.png"
    synthetic_image(64, 80, seed=7).save(path)
    return path


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_image(w, h, seed=i)) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def reference(tiny_owlv2):
    return (Owlv2Processor.from_pretrained(tiny_owlv2),
            Owlv2ForObjectDetection.from_pretrained(tiny_owlv2).eval())


def _adapter(model_dir, query_image=None, **kw) -> Owlv2ExampleDetector:
    kw.setdefault("threshold", THRESHOLD)
    spec = {"task": "detect-by-example", "model": {"family": "owlv2", "source": model_dir},
            "query_image": str(query_image) if query_image else None, **kw}
    adapter = Owlv2ExampleDetector(ServedModel.model_validate(spec))
    adapter.setup(torch.device("cpu"))
    return adapter


def documented_query_box(reference, image: np.ndarray) -> tuple[float, ...]:
    """The box image_guided_detection queries with when the image is its own query image:
    its most object-like patch's predicted box (model.embed_image_query), in pixels."""
    processor, model = reference
    pil = Image.fromarray(image)
    pixel_values = processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feature_map = model.image_embedder(pixel_values=pixel_values)[0]
        b, h, w, d = feature_map.shape
        _, index, boxes = model.embed_image_query(feature_map.reshape(b, h * w, d), feature_map)
    return tuple((owlv2.box_corners(boxes[0, index[0, 0]]) * max(pil.size)).tolist())


def test_an_example_on_the_documented_query_box_finds_what_image_guided_detection_finds(
        tiny_owlv2, reference, images):
    """Drawing, on an image, the box image_guided_detection would query with when given the
    image as its own query image gives that documented usage's detections: the example's
    patch is the same, and so is everything after it."""
    adapter = _adapter(tiny_owlv2)
    inputs = [ImageInput(im, im.shape[1], im.shape[0],
                         examples=(Example("red_mug", documented_query_box(reference, im)),))
              for im in images]
    out = adapter(inputs)
    for image, result in zip(images, out):
        ref = reference_example(reference, image, Image.fromarray(image), THRESHOLD, 0.3)
        assert len(ref) > 0
        _assert_same(result["detections"], ref)


def test_a_batch_mixing_examples_and_the_query_image_equals_each_image_alone(
        tiny_owlv2, images, query_image):
    adapter = _adapter(tiny_owlv2, query_image, threshold=0.0)
    drawn = [
        (Example("cup", (0, 0, 40, 30)),),
        (),  # the query image's embedding
        (Example("cup", (10, 10, 60, 60)), Example("plate", (50, 40, 96, 96)),
         Example("cup", (0, 50, 30, 90))),
        (Example("fork", (5, 5, 20, 30)),),
    ]
    inputs = [ImageInput(im, im.shape[1], im.shape[0], examples=ex)
              for im, ex in zip(images, drawn)]
    together = adapter(inputs)
    for one, result in zip(inputs, together):
        (alone,) = adapter([one])
        assert len(result["detections"]) == len(alone["detections"]) > 0
        _assert_same(result["detections"], alone["detections"])
    assert {d["label"] for d in together[1]["detections"]} == {"red_mug"}
    assert {d["label"] for d in together[2]["detections"]} <= {"cup", "plate"}
    assert {d["label"] for d in together[0]["detections"]} == {"cup"}


def test_a_labels_examples_are_averaged(tiny_owlv2, images):
    """Two examples of a label make one query, their mean: the same box twice is that box
    once; two different boxes give one label's boxes, scored unlike either alone."""
    adapter = _adapter(tiny_owlv2, threshold=0.0)
    image = images[2]
    a, b = Example("cup", (10, 10, 60, 60)), Example("cup", (50, 40, 96, 96))

    def run(*examples):
        return adapter([ImageInput(image, 96, 96, examples=examples)])[0]["detections"]

    assert run(a, a) == run(a)
    both, alone_a, alone_b = run(a, b), run(a), run(b)
    assert {d["label"] for d in both} == {"cup"}
    assert both[0]["score"] not in (alone_a[0]["score"], alone_b[0]["score"])


def test_example_patch_takes_the_most_object_like_of_the_boxes_that_fit():
    # Patch boxes (cx, cy, w, h): 0 fits the target exactly, 1 nearly (IoU 0.81), 2 is
    # elsewhere, 3 fits less (IoU 0.64).
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.18, 0.18],
                          [0.8, 0.8, 0.2, 0.2], [0.3, 0.3, 0.16, 0.16]])
    target = torch.tensor([[0.2, 0.2, 0.4, 0.4]])
    assert example_patch(boxes, target, torch.tensor([5.0, 1.0, 9.0, 9.0])).tolist() == [0]
    assert example_patch(boxes, target, torch.tensor([1.0, 5.0, 9.0, 9.0])).tolist() == [1]
    # Several targets at once, each its own choice.
    two = torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.7, 0.7, 0.9, 0.9]])
    assert example_patch(boxes, two, torch.tensor([5.0, 1.0, 0.0, 9.0])).tolist() == [0, 2]


def test_unit_box_is_relative_to_the_padded_square():
    assert unit_box((10, 20, 110, 40), 200, 50) == (0.05, 0.1, 0.55, 0.2)
    assert unit_box((0, 0, 50, 200), 50, 200) == (0.0, 0.0, 0.25, 1.0)


def test_without_a_query_image_only_images_with_examples_are_labelled(tiny_owlv2, images):
    """A task may have no query of its own (the job's plan, or the server, then checks that
    every input, or request, brings examples); an image without any is an error."""
    spec = {"task": "detect-by-example", "model": {"family": "owlv2", "source": tiny_owlv2}}
    TaskSpec.model_validate(spec)
    served = ServedModel.model_validate(spec)
    assert served.examples_per_request and not served.labels_per_request
    adapter = _adapter(tiny_owlv2)
    image = images[0]
    with pytest.raises(ValueError, match="no query_image: give each image examples"):
        adapter([ImageInput(image, image.shape[1], image.shape[0])])


def test_examples_are_refused_on_a_tiled_model(tiny_owlv2, query_image, images):
    adapter = _adapter(tiny_owlv2, query_image, tiles={"grid": [2, 2]})
    image = images[2]
    with pytest.raises(ValueError, match="tiled"):
        adapter([ImageInput(image, 96, 96, examples=(Example("cup", (0, 0, 9, 9)),))])


# --------------------------------------------------- query_box: a box in the query image


def test_a_query_box_on_the_documented_query_box_equals_image_guided_detection(
        tiny_owlv2, reference, images, query_image):
    """A job's query_box picks the query image's patch that fits it: on the box
    image_guided_detection picks by itself, the documented usage's detections."""
    query = np.asarray(Image.open(query_image).convert("RGB"))
    box = documented_query_box(reference, query)
    inside = (max(box[0], 0), max(box[1], 0), min(box[2], 64), min(box[3], 80))
    adapter = _adapter(tiny_owlv2, query_image, query_box=inside)
    assert adapter.parameters()["query_box"] == list(inside)
    for image, result in zip(images, adapter(_inputs(images))):
        ref = reference_example(reference, image, Image.open(query_image), THRESHOLD, 0.3)
        assert len(ref) > 0
        _assert_same(result["detections"], ref)


def test_another_query_box_finds_another_object(tiny_owlv2, images, query_image):
    whole = _adapter(tiny_owlv2, query_image, threshold=0.0)
    corner = _adapter(tiny_owlv2, query_image, threshold=0.0, query_box=(0, 0, 12, 12))
    assert not torch.equal(whole.query_embeds, corner.query_embeds)
    assert whole(_inputs(images[:1])) != corner(_inputs(images[:1]))


def _inputs(images):
    return [ImageInput(im, im.shape[1], im.shape[0]) for im in images]


@pytest.mark.parametrize("kwargs, message", [
    ({"query_image": None}, "query_box is a box in query_image: give the query_image"),
    ({"query_box": (10, 10, 5, 20)}, r"query_box \[10.0, 10.0, 5.0, 20.0\]: x0 < x1"),
    ({"query_box": (10, 10, 65, 20)}, "is not a box inside the 64x80 query image"),
])
def test_a_bad_query_box_is_refused_with_the_spec(tiny_owlv2, query_image, kwargs, message):
    spec = {"task": "detect-by-example", "model": {"family": "owlv2", "source": tiny_owlv2},
            "query_image": str(query_image), "query_box": (1, 1, 9, 9), **kwargs}
    with pytest.raises(ValueError, match=message):
        TaskSpec.model_validate(spec)


# ------------------------------------- examples drawn on another image (an example image)


def _example_image(path) -> ExampleImage:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return ExampleImage(str(path), pixels, pixels.shape[1], pixels.shape[0])


def test_boxes_drawn_on_an_example_image_equal_that_image_as_query_image_with_the_box(
        tiny_owlv2, images, query_image):
    """The same object found from either side: a served model given the image and box per
    request, a job given them as query_image and query_box."""
    box = (8.0, 10.0, 40.0, 60.0)
    job = _adapter(tiny_owlv2, query_image, query_box=box, threshold=0.0)
    served = _adapter(tiny_owlv2, threshold=0.0)
    drawn = (Example("red_mug", box),)
    example = _example_image(query_image)
    want = job(_inputs(images))
    got = served([ImageInput(im, im.shape[1], im.shape[0], examples=drawn, example_image=example)
                  for im in images])
    for a, b in zip(got, want):
        assert len(a["detections"]) == len(b["detections"]) > 0
        _assert_same(a["detections"], b["detections"])


def test_an_example_image_is_embedded_once_per_set_of_boxes(tiny_owlv2, images, query_image,
                                                            monkeypatch):
    """Forward passes of the vision tower: the batch's, plus one for the example images not
    yet cached (all of them in one)."""
    adapter = _adapter(tiny_owlv2)
    passes = []
    original = adapter.model.image_embedder
    monkeypatch.setattr(adapter.model, "image_embedder",
                        lambda *a, **k: passes.append(k["pixel_values"].shape[0])
                        or original(*a, **k))
    example = _example_image(query_image)
    other = ExampleImage("other", images[3], images[3].shape[1], images[3].shape[0])
    cup, plate = Example("cup", (0, 0, 30, 30)), Example("plate", (20, 20, 40, 30))

    def run(*drawn, on=(example, example)):
        return adapter([ImageInput(im, im.shape[1], im.shape[0], examples=drawn,
                                   example_image=image) for im, image in zip(images, on)])

    first = run(cup)
    assert passes == [2, 1]  # two images drawn on by one example image: embedded once
    assert run(cup) == first and passes[2:] == [2]  # cached
    run(cup, plate, on=(example, other))  # new boxes, a new image: both in one pass
    assert passes[3:] == [2, 2]


def test_a_batch_mixing_own_boxes_an_example_image_and_the_query_image(
        tiny_owlv2, images, query_image):
    adapter = _adapter(tiny_owlv2, query_image, threshold=0.0)
    example = _example_image(query_image)
    inputs = [
        ImageInput(images[0], 200, 60, examples=(Example("cup", (0, 0, 40, 30)),)),
        ImageInput(images[1], 50, 200, examples=(Example("plate", (5, 5, 60, 70)),),
                   example_image=example),
        ImageInput(images[2], 96, 96),
    ]
    together = adapter(inputs)
    for one, result in zip(inputs, together):
        (alone,) = adapter([one])
        assert len(result["detections"]) == len(alone["detections"]) > 0
        _assert_same(result["detections"], alone["detections"])
    assert [{d["label"] for d in r["detections"]} for r in together] == [
        {"cup"}, {"plate"}, {"red_mug"}]


# ------------------------------- a job's examples: boxes drawn on images, with their labels


def test_a_jobs_examples_on_one_image_equal_its_query_image_and_box(
        tiny_owlv2, images, query_image):
    box = (8.0, 10.0, 40.0, 60.0)
    by_box = _adapter(tiny_owlv2, query_image, query_box=box, threshold=0.0)
    by_examples = _adapter(tiny_owlv2, threshold=0.0, examples=[
        {"image": str(query_image), "box": box, "label": "red_mug"}])
    assert by_examples.parameters()["examples"] == [
        {"image": str(query_image), "box": list(box), "label": "red_mug"}]
    for a, b in zip(by_examples(_inputs(images)), by_box(_inputs(images))):
        assert len(a["detections"]) == len(b["detections"]) > 0
        _assert_same(a["detections"], b["detections"])


def test_a_jobs_examples_across_images_are_a_query_per_label(tiny_owlv2, images, query_image,
                                                              tmp_path):
    other = tmp_path / "kitchen.png"
    Image.fromarray(images[2]).save(other)
    cup = {"image": str(query_image), "box": (8, 10, 40, 60), "label": "cup"}
    cup_too = {"image": str(other), "box": (10, 10, 50, 60), "label": "cup"}
    plate = {"image": str(other), "box": (40, 40, 90, 90), "label": "plate"}
    two = _adapter(tiny_owlv2, threshold=0.0, examples=[cup, cup_too, plate])
    assert two.query_labels == ["cup", "plate"] and two.query_embeds.shape[:2] == (1, 2)
    # The mean of a label's boxes, across images: the cup query is neither box's alone.
    alone = _adapter(tiny_owlv2, threshold=0.0, examples=[cup]).query_embeds[0, 0]
    assert not torch.allclose(two.query_embeds[0, 0], alone)
    twice = _adapter(tiny_owlv2, threshold=0.0, examples=[cup, cup])
    torch.testing.assert_close(twice.query_embeds[0, 0], alone)
    labels = {d["label"] for r in two(_inputs(images)) for d in r["detections"]}
    assert labels <= {"cup", "plate"} and labels


@pytest.mark.parametrize("example, extra, message", [
    ({}, {"query_image": "Q"}, "examples are detect-by-example's queries, instead of a "
                               "query_image: give one or the other"),
    ({"image": "/nonexistent/a.png"}, {}, "examples.0.image '/nonexistent/a.png' is not a file"),
    ({"box": (10, 10, 70, 20)}, {}, r"examples.0.box \[10.0, 10.0, 70.0, 20.0\] is not a box "
                                    r"inside the 64x80 query image"),
    ({"box": (10, 10, 5, 20)}, {}, "x0 < x1 and y0 < y1"),
    ({"label": " "}, {}, "examples.0.label"),
])
def test_bad_job_examples_are_refused_with_the_spec(tiny_owlv2, query_image, example, extra,
                                                    message):
    example = {"image": str(query_image), "box": (1, 1, 9, 9), "label": "cup", **example}
    extra = {k: str(query_image) if v == "Q" else v for k, v in extra.items()}
    task = {"task": "detect-by-example", "model": {"family": "owlv2", "source": tiny_owlv2},
            "examples": [example], **extra}
    with pytest.raises(ValueError, match=message):
        TaskSpec.model_validate(task)


def test_a_served_spec_check_decodes_its_query_image_once(tiny_owlv2, tmp_path, monkeypatch):
    """A served model's spec is validated again for every request (variant_spec): the size
    check of its query_box reads the image once per version of the file, not each time."""
    import os

    from labeler.serve.variants import variant_spec

    path = tmp_path / "q.png"
    synthetic_image(64, 80, seed=7).save(path)
    decoded = []
    original = owlv2.decode_image
    monkeypatch.setattr(owlv2, "decode_image", lambda *a: decoded.append(1) or original(*a))
    served = ServedModel.model_validate({
        "task": "detect-by-example", "model": {"family": "owlv2", "source": tiny_owlv2},
        "query_image": str(path), "query_box": (1, 1, 60, 70)})
    for threshold in (0.1, 0.2, 0.3):
        variant_spec(served, None, threshold)
    assert len(decoded) == 1
    synthetic_image(50, 50, seed=7).save(path)  # a new version, smaller than the box
    os.utime(path, (1, 1))
    with pytest.raises(ValueError, match="not a box inside the 50x50 query image"):
        variant_spec(served, None, 0.4)
