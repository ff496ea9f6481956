"""Boxes drawn in an image as the query, over real HTTP: Serve on the session's local Ray,
tiny OWLv2, 127.0.0.1.

An annotation tool sends an image with the boxes a user drew (`examples`) and gets the
objects like them. The answer must be the adapter's for the same pixels and boxes (the
batch path's code, checked against image_guided_detection in
tests/models/test_owlv2_examples.py), through /v1/detect-by-example, /v1/annotate and Label
Studio's interactive pre-annotation (`params.context`), concurrent requests batched together
each getting their own boxes.
"""

import base64
import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import requests
import torch
from PIL import Image

from labeler.models.base import Example, ExampleImage, ImageInput
from labeler.models.owlv2 import Owlv2ExampleDetector
from labeler.serve.config import ServedModel, ServeSpec
from labeler.testing.ports import free_port
from labeler.testing.samples import jpeg_bytes, synthetic_image

THRESHOLD = 0.05
WIDTH, HEIGHT = 160, 120
# (label, box in pixels of the 160x120 image)
CUPS = [{"label": "cup", "box": [10, 20, 60, 70]}]
CUPS_AND_PLATE = [{"label": "cup", "box": [10, 20, 60, 70]},
                  {"label": "plate", "box": [90, 30, 150, 110]},
                  {"label": "cup", "box": [70, 5, 100, 40]}]
LS_CONFIG = ('<View><Image name="img" value="$photo"/><RectangleLabels name="box" toName="img" '
             'smart="true"><Label value="cup"/><Label value="plate"/></RectangleLabels></View>')


@pytest.fixture(scope="module")
def query_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("query") / "red_mug.png"
    synthetic_image(64, 80, seed=7).save(path)
    return str(path)


def _model_specs(tiny_owlv2: str, query_image: str) -> dict:
    model = {"family": "owlv2", "source": tiny_owlv2}
    return {
        # No query image: every request brings its examples.
        "finder": {"name": "finder", "task": "detect-by-example", "model": model,
                   "threshold": THRESHOLD, "resources": {"num_cpus": 0.25},
                   "serving": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}},
        "mugs": {"name": "mugs", "task": "detect-by-example", "model": model,
                 "query_image": query_image, "threshold": THRESHOLD,
                 "resources": {"num_cpus": 0.25}},
        "detector": {"name": "detector", "task": "detect", "model": model, "labels": ["cat"],
                     "resources": {"num_cpus": 0.25}},
        "tiled": {"name": "tiled", "task": "detect-by-example", "model": model,
                  "query_image": query_image, "tiles": {"grid": [2, 1]},
                  "resources": {"num_cpus": 0.1}},
    }


QUERY_BOX = [8.0, 10.0, 40.0, 60.0]  # in the 64x80 query image


@pytest.fixture(scope="module")
def video_rows(ray_local, tiny_owlv2, query_image, tmp_path_factory) -> tuple[bytes, list]:
    """A video, and a tracked detect-by-example job's rows for it: query_image and
    query_box, every 2nd frame (run before Serve takes its CPUs)."""
    from labeler.cli import main
    from labeler.testing.videos import encode_video

    folder = tmp_path_factory.mktemp("example_video")
    path = encode_video(folder / "clip.mp4", "libx264", count=20)
    out = folder.parent / "example_video_job"
    assert main(["run", "--input", path, "--media", "video", "--every-n-frames", "2",
                 "--task", "detect-by-example", "--family", "owlv2", "--model", tiny_owlv2,
                 "--query-image", query_image, "--query-box", ",".join(map(str, QUERY_BOX)),
                 "--threshold", str(THRESHOLD), "--track", "--output", str(out),
                 "--no-progress"]) == 0
    rows = sorted(pads.dataset(out, format="parquet").to_table().to_pylist(),
                  key=lambda r: r["frame_index"])
    return Path(path).read_bytes(), rows


@pytest.fixture(scope="module")
def url(ray_local, tiny_owlv2, query_image, video_rows):
    from ray import serve

    from labeler.serve.server import start

    spec = ServeSpec.model_validate({
        "host": "127.0.0.1", "port": free_port(),
        "models": list(_model_specs(tiny_owlv2, query_image).values()),
        "ingress_num_cpus": 0.25})
    base, _ = start(spec)
    yield base
    serve.shutdown()


@pytest.fixture(scope="module")
def adapters(tiny_owlv2, query_image) -> dict:
    """The served models' adapters, built in this process as a replica builds them."""
    built = {}
    for name in ("finder", "mugs"):
        adapter = Owlv2ExampleDetector(ServedModel.model_validate(
            _model_specs(tiny_owlv2, query_image)[name]).task_spec())
        adapter.setup(torch.device("cpu"))
        built[name] = adapter
    return built


def _image(seed: int) -> bytes:
    return jpeg_bytes(synthetic_image(WIDTH, HEIGHT, seed=seed))


def _want(adapter, data: bytes, examples: list[dict]) -> list[dict]:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    drawn = tuple(Example(e["label"], tuple(e["box"])) for e in examples)
    (out,) = adapter([ImageInput(pixels, pixels.shape[1], pixels.shape[0], examples=drawn)])
    return out["detections"]


def _same(got: list[dict], want: list[dict]) -> None:
    assert [d["label"] for d in got] == [d["label"] for d in want]
    for a, b in zip(got, want):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        for key in ("x0", "y0", "x1", "y1"):
            assert a[key] == pytest.approx(b[key], abs=1e-3)


def _find(url, data: bytes, examples, model="finder", **fields):
    form = {"examples": json.dumps(examples), "model": model, **fields}
    return requests.post(f"{url}/v1/detect-by-example", files={"image": ("x.jpg", data)},
                         data=form, timeout=60)


def test_drawn_boxes_find_what_the_adapter_finds(url, adapters):
    data = _image(1)
    for examples in (CUPS, CUPS_AND_PLATE):
        response = _find(url, data, examples)
        assert response.status_code == 200, response.text
        record = response.json()
        want = _want(adapters["finder"], data, examples)
        assert want
        _same(record["detections"], want)
        assert {d["label"] for d in record["detections"]} <= {e["label"] for e in examples}
        assert json.loads(record["parameters"])["examples"] == examples
        assert record["task"] == "detect-by-example" and record["error"] is None
    # The same through a JSON body and /v1/annotate, beside another task.
    response = requests.post(f"{url}/v1/annotate", timeout=60, json={
        "image": base64.b64encode(data).decode(),
        "tasks": [{"model": "finder", "examples": CUPS}, {"model": "detector"}]})
    assert response.status_code == 200, response.text
    found, detected = response.json()["records"]
    _same(found["detections"], _want(adapters["finder"], data, CUPS))
    assert detected["task"] == "detect" and "examples" not in json.loads(detected["parameters"])


def test_examples_replace_a_served_query_image(url, adapters):
    data = _image(2)
    plain = _find(url, data, None, model="mugs")
    assert plain.status_code == 200, plain.text
    _same(plain.json()["detections"], _want(adapters["mugs"], data, []))
    assert {d["label"] for d in plain.json()["detections"]} == {"red_mug"}
    drawn = _find(url, data, CUPS, model="mugs")
    assert drawn.status_code == 200, drawn.text
    _same(drawn.json()["detections"], _want(adapters["mugs"], data, CUPS))
    assert {d["label"] for d in drawn.json()["detections"]} == {"cup"}


def _want_drawn_on(adapter, data: bytes, example: bytes, examples: list[dict]) -> list[dict]:
    """The adapter's detections in `data` for boxes drawn on the image `example`."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    drawn_on = np.asarray(Image.open(io.BytesIO(example)).convert("RGB"))
    image = ExampleImage("k", drawn_on, drawn_on.shape[1], drawn_on.shape[0])
    drawn = tuple(Example(e["label"], tuple(e["box"])) for e in examples)
    (out,) = adapter([ImageInput(pixels, pixels.shape[1], pixels.shape[0], examples=drawn,
                                 example_image=image)])
    return out["detections"]


def test_boxes_drawn_on_another_image_find_the_object_in_this_one(url, adapters):
    """An annotation session: one example image with a box, then image after image."""
    example = jpeg_bytes(synthetic_image(200, 150, seed=42))
    drawn = [{"label": "cup", "box": [120, 40, 190, 140]}]  # outside the 160x120 images
    for seed in (20, 21):
        data = _image(seed)
        response = requests.post(f"{url}/v1/detect-by-example", timeout=60, files={
            "image": ("x.jpg", data), "example_image": ("ex.jpg", example)},
            data={"model": "finder", "examples": json.dumps(drawn)})
        assert response.status_code == 200, response.text
        want = _want_drawn_on(adapters["finder"], data, example, drawn)
        assert want
        _same(response.json()["detections"], want)
        parameters = json.loads(response.json()["parameters"])
        assert parameters["examples"] == drawn
        assert parameters["example_image"] == f"sha256:{hashlib.sha256(example).hexdigest()}"
    both = requests.post(f"{url}/v1/annotate", timeout=60, json={
        "image": base64.b64encode(data).decode(), "tasks": [
            {"model": "finder", "examples": drawn,
             "example_image": base64.b64encode(example).decode()},
            {"model": "finder", "examples": CUPS}]})
    assert both.status_code == 200, both.text
    other, own = both.json()["records"]
    _same(other["detections"], want)
    _same(own["detections"], _want(adapters["finder"], data, CUPS))


def test_a_box_drawn_on_an_example_image_tracks_the_object_through_a_video(
        url, video_rows, query_image):
    """/v1/video with a box drawn on an image: every frame's boxes for it, linked into
    tracks, as a tracked job with that image as query_image and the box as query_box."""
    video, rows = video_rows
    response = requests.post(f"{url}/v1/video", timeout=120, files={
        "video": ("clip.mp4", video),
        "example_image": ("red_mug.png", Path(query_image).read_bytes())}, data={
        "model": "finder", "examples": json.dumps([{"label": "red_mug", "box": QUERY_BOX}]),
        "sampling": json.dumps({"every_n_frames": 2})})
    assert response.status_code == 200, response.text
    records = response.json()["records"]
    assert [r["frame_index"] for r in records] == [r["frame_index"] for r in rows] == list(
        range(0, 20, 2))
    assert sum(len(r["detections"]) for r in rows) > 0
    for got, want in zip(records, rows):
        _same(got["detections"], want["detections"])
        assert [d["track_id"] for d in got["detections"]] == \
            [d["track_id"] for d in want["detections"]]
    assert response.json()["tracks"] == len({d["track_id"] for r in rows
                                             for d in r["detections"]})


def test_concurrent_requests_each_get_their_own_examples(url, adapters):
    """16 requests at once, four images with four sets of boxes: batched together, each
    answered with its own boxes' detections."""
    images = [_image(10 + i) for i in range(4)]
    sets = [CUPS, CUPS_AND_PLATE, [{"label": "lid", "box": [0, 0, 159, 119]}],
            [{"label": "cup", "box": [40, 40, 80, 100]}]]
    jobs = [(i, k) for i in range(4) for k in range(4)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: _find(url, images[job[0]], sets[job[1]]), jobs))
    for (i, k), response in zip(jobs, answers):
        assert response.status_code == 200, response.text
        _same(response.json()["detections"], _want(adapters["finder"], images[i], sets[k]))


def test_label_studio_interactive_boxes_become_examples(url, adapters):
    """A box drawn with a smart RectangleLabels in Label Studio arrives as `context`; the
    prediction holds the detections of its label's examples, in percent of the image."""
    data = _image(3)
    data_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    drawn = {"result": [
        {"type": "rectanglelabels", "from_name": "box", "to_name": "img",
         "original_width": WIDTH, "original_height": HEIGHT,
         "value": {"x": 10 / WIDTH * 100, "y": 20 / HEIGHT * 100, "width": 50 / WIDTH * 100,
                   "height": 50 / HEIGHT * 100, "rotation": 0, "rectanglelabels": ["cup"]}},
        {"type": "keypointlabels", "from_name": "kp", "value": {"x": 5, "y": 5}}]}
    answer = requests.post(f"{url}/predict", timeout=60, json={
        "label_config": LS_CONFIG, "tasks": [{"id": 4, "data": {"photo": data_url}}],
        "params": {"context": drawn}})
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    want = _want(adapters["finder"], data, CUPS)
    assert len(prediction["result"]) == len(want) > 0
    for region, d in zip(prediction["result"], want):
        assert region["type"] == "rectanglelabels"
        assert region["value"]["rectanglelabels"] == ["cup"]
        assert region["value"]["x"] == pytest.approx(d["x0"] / WIDTH * 100, abs=1e-3)
        assert region["value"]["height"] == pytest.approx((d["y1"] - d["y0"]) / HEIGHT * 100,
                                                          abs=1e-3)
        assert region["score"] == pytest.approx(d["score"], abs=1e-5)


def test_the_service_lists_the_endpoint(url):
    models = {m["name"]: m for m in requests.get(f"{url}/v1/models", timeout=10).json()["models"]}
    assert models["finder"]["endpoint"] == "/v1/detect-by-example"
    assert models["finder"]["examples_per_request"] is True and models["finder"]["query_image"] is None
    assert models["mugs"]["examples_per_request"] is False
    paths = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    body = paths["/v1/detect-by-example"]["post"]["requestBody"]["content"]
    assert "examples" in body["application/json"]["schema"]["properties"]


def _ls(url, context, tasks=None, config=LS_CONFIG):
    tasks = tasks or [{"data": {"photo": "data:image/jpeg;base64,"
                                         + base64.b64encode(_image(5)).decode()}}]
    return requests.post(f"{url}/predict", timeout=30, json={
        "label_config": config, "tasks": tasks, "params": {"context": context}})


def _rect(**value):
    return {"result": [{"type": "rectanglelabels", "from_name": "box",
                        "value": {"x": 10, "y": 10, "width": 20, "height": 20,
                                  "rectanglelabels": ["cup"], **value}}]}


BAD = [
    ("no examples for a model without a query image", lambda u: _find(u, _image(5), None),
     "has no query_image, so each request brings the boxes"),
    ("a box outside the image", lambda u: _find(u, _image(5), [{"label": "cup",
                                                                "box": [10, 10, 170, 50]}]),
     "examples.0.box: [10.0, 10.0, 170.0, 50.0] is not a box inside the 160x120 image"),
    ("a box upside down", lambda u: _find(u, _image(5), [{"label": "cup",
                                                          "box": [50, 10, 40, 50]}]),
     "examples.0.box"),
    ("a blank label", lambda u: _find(u, _image(5), [{"label": "  ", "box": [1, 1, 9, 9]}]),
     "examples.0.label"),
    ("a box of three numbers", lambda u: _find(u, _image(5), [{"label": "a", "box": [1, 1, 9]}]),
     "examples.0.box"),
    ("examples that are not JSON", lambda u: requests.post(
        f"{u}/v1/detect-by-example", files={"image": ("x.jpg", _image(5))},
        data={"examples": "[{label"}, timeout=30), "examples: not valid JSON"),
    ("65 examples", lambda u: _find(u, _image(5), [{"label": "a", "box": [1, 1, 9, 9]}] * 65),
     "examples: List should have at most 64 items"),
    ("examples for a detect model", lambda u: requests.post(
        f"{u}/v1/detect", files={"image": ("x.jpg", _image(5))},
        data={"examples": json.dumps(CUPS)}, timeout=30),
     "boxes to find more of are for task 'detect-by-example'"),
    ("examples for a tiled model", lambda u: _find(u, _image(5), CUPS, model="tiled"),
     "is tiled, and examples are drawn on the whole image"),
    ("a bad box in the second task", lambda u: requests.post(f"{u}/v1/annotate", timeout=30, json={
        "image": base64.b64encode(_image(5)).decode(),
        "tasks": [{"model": "detector"}, {"model": "finder", "examples": [
            {"label": "cup", "box": [0, 0, 10, 500]}]}]}), "tasks.1.examples.0.box"),
    ("an example image without examples", lambda u: requests.post(
        f"{u}/v1/detect-by-example", files={"image": ("x.jpg", _image(5)),
                                            "example_image": ("e.jpg", _image(6))},
        data={"model": "mugs"}, timeout=30),
     "example_image: send the `examples` drawn on it"),
    ("an example image and an example uri", lambda u: requests.post(
        f"{u}/v1/detect-by-example", files={"image": ("x.jpg", _image(5)),
                                            "example_image": ("e.jpg", _image(6))},
        data={"examples": json.dumps(CUPS), "example_uri": "https://a/b.jpg"}, timeout=30),
     "example_image: give it or example_uri, not both"),
    ("an example image that is not an image", lambda u: requests.post(
        f"{u}/v1/detect-by-example", files={"image": ("x.jpg", _image(5)),
                                            "example_image": ("e.jpg", b"not an image")},
        data={"examples": json.dumps(CUPS)}, timeout=30),
     "example_image: image cannot be used"),
    ("a box outside the example image", lambda u: requests.post(
        f"{u}/v1/detect-by-example", files={"image": ("x.jpg", _image(5)),
                                            "example_image": ("e.jpg", jpeg_bytes(
                                                synthetic_image(50, 40, seed=1)))},
        data={"examples": json.dumps(CUPS)}, timeout=30),
     "examples.0.box: [10.0, 20.0, 60.0, 70.0] is not a box inside the 50x40 image"),
    ("an empty example image", lambda u: requests.post(
        f"{u}/v1/detect-by-example", files={"image": ("x.jpg", _image(5)),
                                            "example_image": ("e.jpg", b"")},
        data={"examples": json.dumps(CUPS)}, timeout=30),
     "example_image: image cannot be used: empty file"),
    ("an example image in bad base64", lambda u: requests.post(
        f"{u}/v1/annotate", timeout=30, json={
            "image": base64.b64encode(_image(5)).decode(),
            "tasks": [{"model": "finder", "examples": CUPS, "example_image": "%%%"}]}),
     "tasks.0.example_image: the file is not valid base64"),
    ("examples with a video but no example image", lambda u: requests.post(
        f"{u}/v1/video", files={"video": ("v.mp4", b"00")},
        data={"model": "mugs", "examples": json.dumps(CUPS)}, timeout=30),
     "examples: a video's examples are boxes drawn on an image"),
    ("a video for a model without a query image, no examples", lambda u: requests.post(
        f"{u}/v1/video", files={"video": ("v.mp4", b"00")}, data={"model": "finder"},
        timeout=30), "drawn on it (model 'finder' has no query_image)"),
    ("a rotated box drawn in Label Studio", lambda u: _ls(u, _rect(rotation=30)),
     "context.result.0: a rotated rectangle cannot be an example"),
    ("a box drawn without a label", lambda u: _ls(u, _rect(rectanglelabels=[])),
     "context.result.0.value.rectanglelabels: pick the label"),
    ("a context with no rectangle", lambda u: _ls(u, {"result": [
        {"type": "keypointlabels", "value": {"x": 5, "y": 5}}]}), "no rectangle drawn"),
    ("a context over two tasks", lambda u: _ls(u, _rect(), tasks=[
        {"data": {"photo": "https://a/1.jpg"}}, {"data": {"photo": "https://a/2.jpg"}}]),
     "regions are drawn on one task's image, and 2 tasks were sent"),
    ("a box drawn off the image", lambda u: _ls(u, _rect(x=100, width=5)),
     "context: examples.0.box"),
]


@pytest.mark.parametrize("case, send, message", BAD, ids=[case for case, *_ in BAD])
def test_bad_examples_get_a_422_naming_the_field(url, case, send, message):
    response = send(url)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def test_an_example_uri_the_server_may_not_fetch_is_refused_naming_it(url):
    response = requests.post(f"{url}/v1/detect-by-example", timeout=30, json={
        "image": base64.b64encode(_image(5)).decode(), "examples": CUPS,
        "example_uri": "https://169.254.169.254/latest/meta-data/x.jpg"})
    assert response.status_code == 403, response.text
    assert response.json()["error"].startswith("example_image: ")
