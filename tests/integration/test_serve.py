"""The online API over real HTTP: Serve on the session's local Ray, tiny OWLv2, 127.0.0.1.

One application for the module: `detector` (the model under test, dynamic batching) and
`limited` (same checkpoint; a tiny queue, a long batch wait and a short timeout, to see 503
and 504), `narrow` (2 requests a replica, 1 queued: a Label Studio request of many tasks
must not overflow it). A batch job over the same images runs first, so responses can be compared with its
Parquet rows.
"""

import base64
import io
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.dataset as pads
import pytest
import requests
import torch
from PIL import Image

from labeler.config import TaskSpec, load_job_spec
from labeler.models.base import ImageInput
from labeler.models.owlv2 import Owlv2Detector
from labeler.serve.config import ServeSpec
from labeler.testing.ports import free_port
from labeler.testing.samples import jpeg_bytes, synthetic_image

TOKEN = "test-token-7f3a"
LABELS = ["a photo of a cat", "a dog", "car"]
OTHER_LABELS = ["bus", "a red ball"]
THRESHOLD = 0.2
# The detector's ontology, prompt templates, tiles and NMS, in the batch job and the served
# model alike.
TILES = {"grid": [2, 2], "overlap": 0.25, "full_image": True, "merge_threshold": 0.5}
BOX_OPTIONS = {"queries": {"car": ["car", "automobile"]}, "label_thresholds": {"a dog": 0.3},
               "templates": ["a photo of a {}", "{}"], "tiles": TILES,
               "nms": "per-label", "nms_threshold": 0.5, "max_detections": 6}
MAX_BODY = 256 * 1024  # small, so that a 413 needs no big payload
MAX_PIXELS = 600_000  # above every test image, below the one sent to see a 422
BODY_IDLE_S = 2.0  # a body that stalls this long gets a 408
# (name, width, height, format): wide, tall, square; one JPEG carries an EXIF rotation.
IMAGES = [("wide.jpg", 200, 100, "JPEG"), ("tall.png", 90, 160, "PNG"),
          ("square.webp", 120, 120, "WEBP"), ("rotated.jpg", 160, 120, "JPEG")]



@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("serve_images")
    files = {}
    for i, (name, w, h, fmt) in enumerate(IMAGES):
        img = synthetic_image(w, h, seed=100 + i)
        buf = io.BytesIO()
        if name == "rotated.jpg":
            exif = Image.Exif()
            exif[0x0112] = 6  # shown rotated 90 degrees: 120x160
            img.save(buf, fmt, exif=exif)
        else:
            img.save(buf, fmt)
        (folder / name).write_bytes(buf.getvalue())
        files[name] = buf.getvalue()
    files["_folder"] = str(folder).encode()
    return files


@pytest.fixture(scope="module")
def batch_rows(ray_local, image_files, tiny_owlv2, tmp_path_factory) -> dict[str, dict]:
    """The batch job's rows for the test images (run before Serve takes its CPUs)."""
    from labeler.jobs.images import run_image_job

    out = tmp_path_factory.mktemp("serve_job") / "out"
    spec = load_job_spec(None, input=image_files["_folder"].decode(), output=str(out),
                         task="detect", family="owlv2", model=tiny_owlv2, labels=LABELS,
                         threshold=THRESHOLD, batch_size=4)
    task = spec.tasks[0]
    spec = spec.model_copy(update={"tasks": [TaskSpec.model_validate({
        **task.model_dump(), **BOX_OPTIONS, "resources": {"num_cpus": 0.5, "batch_size": 4}})]})
    run_image_job(spec, progress=False)
    table = pads.dataset(out, format="parquet").to_table()
    return {r["id"]: r for r in table.to_pylist()}


# pseudo-label: each image's caption (a .txt beside it in the batch job, `caption` in the
# request) and a served vocabulary; "" gives no caption query: the vocabulary alone.
CAPTIONS = {"wide.jpg": "A brown dog on a red sofa", "tall.png": "two cats, a car",
            "square.webp": "", "rotated.jpg": "a bus"}
PSEUDO = {"vocabulary": ["cat", "dog"], "image_threshold": 0.5}
PSEUDO_THRESHOLD = 0.05


@pytest.fixture(scope="module")
def pseudo_rows(ray_local, image_files, tiny_owlv2, tmp_path_factory) -> dict[str, dict]:
    """The batch pseudo-label job's rows, captions from .txt files beside the images."""
    from labeler.jobs.images import run_image_job

    folder = tmp_path_factory.mktemp("pseudo_images")
    for name, caption in CAPTIONS.items():
        (folder / name).write_bytes(image_files[name])
        (folder / name).with_suffix(".txt").write_text(caption)
    out = tmp_path_factory.mktemp("pseudo_job") / "out"
    spec = load_job_spec(None, input=str(folder), output=str(out), task="pseudo-label",
                         family="owlv2", model=tiny_owlv2, box_threshold=PSEUDO_THRESHOLD)
    task = spec.tasks[0]
    spec = spec.model_copy(update={"tasks": [task.model_copy(update={
        "pseudo_label": task.pseudo_label.model_copy(update=PSEUDO),
        "resources": task.resources.model_copy(update={"num_cpus": 0.5})})]})
    run_image_job(spec, progress=False)
    table = pads.dataset(out, format="parquet").to_table()
    return {r["id"]: r for r in table.to_pylist()}


LABEL_STUDIO_TOKEN = "ls-token-0123"


@pytest.fixture(scope="module")
def label_studio(image_files):
    """A stand-in for Label Studio's file serving on 127.0.0.1 (a real HTTP server): its
    uploads under /data/upload/, answered only with its API token, as Label Studio does."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Files(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            name = self.path.removeprefix("/data/upload/1/")
            if self.headers.get("Authorization") != f"Token {LABEL_STUDIO_TOKEN}":
                self.send_error(401)
            elif name in image_files and not name.startswith("_"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(image_files[name])
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


@pytest.fixture(scope="module")
def url(ray_local, batch_rows, pseudo_rows, tiny_owlv2, label_studio):
    from ray import serve

    from labeler.serve.server import start

    model = {"family": "owlv2", "source": tiny_owlv2}
    spec = ServeSpec.model_validate({
        "host": "127.0.0.1", "port": free_port(), "api_tokens": [TOKEN],
        "models": [
            {"name": "detector", "task": "detect", "model": model, "labels": LABELS,
             "threshold": THRESHOLD, **BOX_OPTIONS,
             # Two batches at once, as on a GPU: the other models run one at a time.
             "resources": {"num_cpus": 0.5, "concurrent_batches": 2},
             # 20 ms: concurrent test requests land in shared batches.
             "serving": {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}},
            {"name": "limited", "task": "detect", "model": model, "labels": LABELS,
             "resources": {"num_cpus": 0.5},
             # Batches that wait 3 s to fill, 2 requests per replica, 1 queued, 0.5 s
             # timeout: of 8 concurrent requests 2 wait in the replica and 1 in the queue
             # (504 after 0.5 s), the other 5 are refused at once (503).
             "serving": {"max_batch_size": 8, "batch_wait_timeout_s": 3.0,
                         "max_ongoing_requests": 2, "max_queued_requests": 1,
                         "request_timeout_s": 0.5}},
            {"name": "narrow", "task": "detect", "model": model, "labels": LABELS,
             "resources": {"num_cpus": 0.25},
             "serving": {"max_batch_size": 2, "max_ongoing_requests": 2,
                         "max_queued_requests": 1}},
            {"name": "pseudo", "task": "pseudo-label", "model": model,
             "threshold": PSEUDO_THRESHOLD, "pseudo_label": PSEUDO,
             "resources": {"num_cpus": 0.25}},
            {"name": "pseudo-vocabulary", "task": "pseudo-label", "model": model,
             "threshold": PSEUDO_THRESHOLD,
             "pseudo_label": {**PSEUDO, "use_captions": False},
             "resources": {"num_cpus": 0.25}}],
        "limits": {"max_body_bytes": MAX_BODY, "max_pixels": MAX_PIXELS,
                   "body_idle_timeout_s": BODY_IDLE_S},
        "uri": {"allowed_hosts": ["localhost", "127.0.0.1", "169.254.169.254", "10.1.2.3",
                                  "::ffff:127.0.0.1"],
                "allowed_s3_buckets": ["images"], "label_studio_url": label_studio[0]},
        "ingress_num_cpus": 0.25,
    })
    os.environ["LABEL_STUDIO_API_KEY"] = LABEL_STUDIO_TOKEN  # the ingress gets it from here
    try:
        base, notices = start(spec)
    finally:
        del os.environ["LABEL_STUDIO_API_KEY"]
    assert notices == []  # a token is configured
    yield base
    serve.shutdown()


@pytest.fixture(scope="module")
def http():
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield session
    session.close()


def _detect(http, url, data: bytes, name="x.jpg", timeout=30, **fields):
    form = {k: (",".join(v) if isinstance(v, list) else str(v)) for k, v in fields.items()}
    return http.post(f"{url}/v1/detect", files={"image": (name, data)}, data=form, timeout=timeout)


def _same_detections(got: list[dict], want: list[dict]) -> None:
    assert [d["label"] for d in got] == [d["label"] for d in want]
    for a, b in zip(got, want):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        for key in ("x0", "y0", "x1", "y1"):
            assert a[key] == pytest.approx(b[key], abs=1e-3)


def test_response_equals_the_batch_job_row(url, http, image_files, batch_rows):
    for name, *_ in IMAGES:
        row = batch_rows[name]
        assert row["error"] is None and row["detections"]
        for response in (
            _detect(http, url, image_files[name], name, labels=LABELS, threshold=THRESHOLD),
            http.post(f"{url}/v1/detect", timeout=30, json={
                "image": base64.b64encode(image_files[name]).decode(), "id": name}),
        ):
            assert response.status_code == 200, response.text
            record = response.json()
            assert record["task_name"] == "detector"  # the served model's name
            for key in ("width", "height", "task", "model", "model_family",
                        "model_revision", "parameters", "prompt", "error", "text", "ocr_regions"):
                assert record[key] == row[key], key
            _same_detections(record["detections"], row["detections"])
            # Numbers as a Parquet row holds them (float32), every field of a box present.
            assert [sorted(d) for d in record["detections"]] == [
                sorted(d) for d in row["detections"]]
            assert all(float(np.float32(d[key])) == d[key] for d in record["detections"]
                       for key in ("score", "x0", "y0", "x1", "y1"))
    assert (batch_rows["rotated.jpg"]["width"], batch_rows["rotated.jpg"]["height"]) == (120, 160)
    # The box options shaped the rows: max_detections bound some, the ontology named none
    # "automobile".
    assert max(len(r["detections"]) for r in batch_rows.values()) == BOX_OPTIONS["max_detections"]
    assert all(d["label"] in LABELS for r in batch_rows.values() for d in r["detections"])
    assert response.json()["id"] == name and response.json()["uri"] == "base64"


def test_pseudo_label_response_equals_the_batch_job_row(url, http, image_files, pseudo_rows):
    """The caption sent with the request gives the queries the batch job built from the .txt
    beside the image: same boxes, labels, objectness and image-level filtering."""
    for name, caption in CAPTIONS.items():
        row = pseudo_rows[name]
        assert row["error"] is None
        response = http.post(f"{url}/v1/pseudo-label", timeout=30, json={
            "image": base64.b64encode(image_files[name]).decode(), "caption": caption})
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["task"] == "pseudo-label" and record["task_name"] == "pseudo"
        for key in ("width", "height", "parameters", "kept", "filter_reason"):
            assert record[key] == row[key], key
        _same_detections(record["detections"], row["detections"])
        for got, want in zip(record["detections"], row["detections"]):
            assert got["objectness"] == pytest.approx(want["objectness"], abs=1e-5)
        best = max((d["score"] for d in record["detections"]), default=0.0)
        assert record["kept"] == (best >= PSEUDO["image_threshold"])
    labels = {d["label"] for r in pseudo_rows.values() for d in r["detections"]}
    assert labels & {"brown dog", "red sofa", "cats", "car", "bus"}  # caption queries found
    assert labels & {"cat", "dog"}  # and the vocabulary


def test_caption_and_labels_go_where_they_apply(url, http, image_files):
    body = {"image": base64.b64encode(image_files["wide.jpg"]).decode()}
    wrong = http.post(f"{url}/v1/detect", json={**body, "caption": "a dog"}, timeout=30)
    assert wrong.status_code == 422 and "takes no caption" in wrong.json()["error"]
    labels = http.post(f"{url}/v1/pseudo-label", json={**body, "labels": ["dog"]}, timeout=30)
    assert labels.status_code == 422 and "pseudo_label.vocabulary" in labels.json()["error"]


def test_vocabulary_only_pseudo_label_refuses_a_caption(url, http, image_files):
    """A model served with use_captions: false would ignore a caption: 422, not a silent drop."""
    body = {"image": base64.b64encode(image_files["wide.jpg"]).decode(),
            "model": "pseudo-vocabulary"}
    refused = http.post(f"{url}/v1/pseudo-label", json={**body, "caption": "a dog"}, timeout=30)
    assert refused.status_code == 422
    assert "use_captions: false" in refused.json()["error"]
    answered = http.post(f"{url}/v1/pseudo-label", json=body, timeout=30)
    assert answered.status_code == 200, answered.text
    labels = {d["label"] for d in answered.json()["detections"]}
    assert labels and labels <= set(PSEUDO["vocabulary"])


def test_request_labels_equal_an_adapter_built_with_them(url, http, image_files, tiny_owlv2):
    """Per-request labels re-encode the queries: same as a detector set up with them and the
    served model's other options (its templates, tiles and NMS; none of its labels has
    queries here)."""
    adapter = Owlv2Detector(TaskSpec(task="detect", model={"family": "owlv2", "source": tiny_owlv2},
                                     labels=OTHER_LABELS, threshold=0.05,
                                     templates=BOX_OPTIONS["templates"], tiles=TILES,
                                     nms="per-label", nms_threshold=0.5, max_detections=6))
    adapter.setup(torch.device("cpu"))
    for name, *_ in IMAGES[:2]:
        pixels = np.asarray(Image.open(io.BytesIO(image_files[name])).convert("RGB"))
        (want,) = adapter([ImageInput(pixels, pixels.shape[1], pixels.shape[0])])
        response = _detect(http, url, image_files[name], name, labels=OTHER_LABELS, threshold=0.05)
        assert response.status_code == 200, response.text
        record = response.json()
        assert json.loads(record["parameters"]) == {"labels": OTHER_LABELS, "threshold": 0.05,
                                                    "templates": BOX_OPTIONS["templates"],
                                                    "preprocess": "processor",
                                                    "nms": "per-label", "nms_threshold": 0.5,
                                                    "max_detections": 6, "tiles": TILES}
        assert want["detections"]
        _same_detections(record["detections"], want["detections"])


def test_concurrent_mixed_requests_each_get_their_own_result(url, http):
    """32 requests at once over 8 images and two label sets: batched together, grouped by
    labels, and every caller gets exactly what it gets alone."""
    images = [jpeg_bytes(synthetic_image(60 + 13 * i, 90 - 5 * i, seed=200 + i)) for i in range(8)]
    jobs = [(i, labels) for labels in (LABELS, OTHER_LABELS) for i in range(8)] * 2
    alone = {(i, tuple(labels)): _detect(http, url, images[i], labels=labels, threshold=0.05).json()
             for i, labels in jobs[:16]}
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(
            lambda job: _detect(http, url, images[job[0]], labels=job[1], threshold=0.05), jobs))
    for (i, labels), response in zip(jobs, together):
        assert response.status_code == 200, response.text
        want = alone[(i, tuple(labels))]
        assert (response.json()["width"], response.json()["height"]) == (want["width"], want["height"])
        assert {d["label"] for d in response.json()["detections"]} <= set(labels)
        _same_detections(response.json()["detections"], want["detections"])


def test_cvat_format_and_annotate_several_tasks(url, http, image_files):
    data = image_files["wide.jpg"]
    record = _detect(http, url, data).json()
    shapes = http.post(f"{url}/v1/detect?format=cvat", files={"image": ("w.jpg", data)}, timeout=30)
    assert shapes.status_code == 200
    assert shapes.json() == [{"type": "rectangle", "label": d["label"], "confidence": str(d["score"]),
                              "points": [d["x0"], d["y0"], d["x1"], d["y1"]]}
                             for d in record["detections"]]

    both = http.post(f"{url}/v1/annotate", timeout=30, json={
        "image": base64.b64encode(data).decode(), "id": "img-1",
        "tasks": [{"task": "detect"}, {"model": "detector", "labels": ["car"], "threshold": 0.5}]})
    assert both.status_code == 200, both.text
    first, second = both.json()["records"]
    assert first["id"] == second["id"] == "img-1"
    _same_detections(first["detections"], record["detections"])
    assert json.loads(second["parameters"])["labels"] == ["car"]
    assert all(d["label"] == "car" and d["score"] > 0.5 for d in second["detections"])


FUSED_TASKS = [{"model": "detector"}, {"model": "detector", "labels": ["a dog", "car"],
                                       "threshold": 0.1}]


def test_annotate_fuses_the_box_tasks_records_as_labeler_fuse_does(url, http, image_files):
    """`fuse`: the records fused by labeler.fusion.records (the code of `labeler fuse`,
    whose boxes are checked against the reference WBF): the same numbers as fusing the
    records' boxes; the same in a multipart form."""
    from labeler.fusion import FusionRule, fuse_boxes

    data = image_files["wide.jpg"]
    fuse = {"weights": [2, 1], "iou": 0.5}
    response = http.post(f"{url}/v1/annotate", timeout=30, json={
        "image": base64.b64encode(data).decode(), "id": "img-2", "tasks": FUSED_TASKS,
        "fuse": fuse})
    assert response.status_code == 200, response.text
    body = response.json()
    first, second = body["records"]
    fused = body["fused"]
    expected = fuse_boxes([first["detections"], second["detections"]], first["width"],
                          first["height"], FusionRule(weights=(2.0, 1.0), iou=0.5))
    assert expected and len(expected) < len(first["detections"]) + len(second["detections"])
    _same_detections(fused["detections"], expected)
    assert (fused["id"], fused["width"], fused["height"], fused["error"]) == (
        "img-2", first["width"], first["height"], None)
    assert (fused["task"], fused["task_name"], fused["model"], fused["model_family"]) == (
        "detect", "fused", "detector+detector#2", "fuse")
    parameters = json.loads(fused["parameters"])
    assert parameters["fuse"] == {"method": "wbf", "tasks": ["detector", "detector#2"],
                                  "weights": [2.0, 1.0], "iou": 0.5, "min_score": 0.0,
                                  "conf_type": "avg", "min_models": 1, "rename": {}}
    assert parameters["sources"] == {"detector": json.loads(first["parameters"]),
                                     "detector#2": json.loads(second["parameters"])}

    form = http.post(f"{url}/v1/annotate", timeout=30, files={"image": ("w.jpg", data)},
                     data={"tasks": json.dumps(FUSED_TASKS), "fuse": json.dumps(fuse)})
    assert form.status_code == 200, form.text
    _same_detections(form.json()["fused"]["detections"], expected)


def test_service_endpoints(url, http):
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert set(ready.json()["models"]) == {"detector", "limited", "narrow", "pseudo",
                                           "pseudo-vocabulary"}
    models = http.get(f"{url}/v1/models", timeout=10).json()["models"]
    assert [(m["name"], m["task"], m["labels"], m["endpoint"]) for m in models] == [
        ("detector", "detect", LABELS, "/v1/detect"), ("limited", "detect", LABELS, "/v1/detect"),
        ("narrow", "detect", LABELS, "/v1/detect"),
        ("pseudo", "pseudo-label", [], "/v1/pseudo-label"),
        ("pseudo-vocabulary", "pseudo-label", [], "/v1/pseudo-label")]
    assert models[0]["serving"]["max_batch_size"] == 8
    assert {key: models[0][key] for key in BOX_OPTIONS} == BOX_OPTIONS
    docs = requests.get(f"{url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/v1/detect", "/v1/ground", "/v1/caption", "/v1/ocr", "/v1/ask",
                 "/v1/pseudo-label", "/v1/annotate",
                 "/v1/models", "/healthz", "/readyz", "/predict", "/setup", "/health"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/v1/detect"]["post"]["requestBody"]["content"]


def test_label_studio_backend(url, http, image_files, label_studio):
    assert http.get(f"{url}/health", timeout=10).json()["status"] == "UP"
    config = ('<View><Image name="img" value="$photo"/><RectangleLabels name="box" toName="img">'
              '<Label value="car"/><Label value="bus"/></RectangleLabels></View>')
    setup = http.post(f"{url}/setup", json={"project": "7", "schema": config}, timeout=10)
    assert setup.status_code == 200 and setup.json()["model_version"].startswith("owlv2:")
    # /setup answers for the model /predict would use: an OCR config, none served here.
    ocr = ('<View><Image name="img" value="$photo"/><Polygon name="poly" toName="img"/>'
           '<TextArea name="text" toName="img" perRegion="true"/></View>')
    refused = http.post(f"{url}/setup", json={"project": "8", "schema": ocr}, timeout=10)
    assert refused.status_code == 404 and "no served model does task 'ocr'" in refused.text
    # Training webhooks are acknowledged (these models do not train from annotations).
    hook = http.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 7}},
                     timeout=10)
    assert hook.status_code == 200 and hook.json()["trained"] is False
    data_url = "data:image/jpeg;base64," + base64.b64encode(image_files["wide.jpg"]).decode()
    answer = http.post(f"{url}/predict", timeout=30, json={
        "project": "7", "tasks": [{"id": 11, "data": {"photo": data_url}}]})
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    record = _detect(http, url, image_files["wide.jpg"], labels=["car", "bus"]).json()
    assert len(prediction["result"]) == len(record["detections"]) > 0
    for res, d in zip(prediction["result"], record["detections"]):
        assert (res["from_name"], res["to_name"], res["type"]) == ("box", "img", "rectanglelabels")
        assert res["value"]["rectanglelabels"] == [d["label"]]
        assert res["value"]["x"] == pytest.approx(d["x0"] / 200 * 100, abs=1e-4)
        assert res["value"]["height"] == pytest.approx((d["y1"] - d["y0"]) / 100 * 100, abs=1e-4)
        assert res["score"] == pytest.approx(d["score"], abs=1e-6)
    # Label Studio sends every selected task in one request: 12 tasks to a model that holds
    # 2 and queues 1 are sent a replica's worth at a time (all at once, 9 were refused: 503).
    def narrow(count: int) -> requests.Response:
        return http.post(f"{url}/predict?model=narrow", timeout=60, json={
            "label_config": config, "tasks": [{"id": k, "data": {"photo": data_url}}
                                              for k in range(count)]})

    one, many = narrow(1), narrow(12)
    assert many.status_code == 200, many.text
    assert many.json()["results"] == one.json()["results"] * 12
    # An image uploaded into Label Studio: fetched from the configured Label Studio with its
    # token, the same prediction as the same bytes sent inline.
    uploaded = http.post(f"{url}/predict", timeout=30, json={
        "label_config": config, "tasks": [{"id": 11, "data": {"photo": "/data/upload/1/wide.jpg"}}]})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["results"] == answer.json()["results"]
    assert label_studio[1][-1] == "/data/upload/1/wide.jpg"
    for path, says in (("/data/upload/1/missing.jpg", "Label Studio answered HTTP 404"),
                       ("/api/projects/", "is a path inside Label Studio that is not one of its "
                                          "files")):
        refused = http.post(f"{url}/predict", timeout=10, json={
            "label_config": config, "tasks": [{"data": {"photo": path}}]})
        assert refused.status_code == 422 and says in refused.json()["error"], refused.text
    assert "/api/projects/" not in label_studio[1]  # never asked for


def test_auth(url, image_files):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {TOKEN}"}):
        response = requests.get(f"{url}/v1/models", headers=headers, timeout=10)
        assert response.status_code == 401 and "API token" in response.json()["error"]
        assert response.headers["WWW-Authenticate"] == "Bearer"
    denied = requests.post(f"{url}/v1/detect", files={"image": ("a.jpg", image_files["wide.jpg"])},
                           timeout=10)
    assert denied.status_code == 401
    basic = base64.b64encode(f"labelstudio:{TOKEN}".encode()).decode()
    assert requests.get(f"{url}/v1/models", headers={"Authorization": f"Basic {basic}"},
                        timeout=10).status_code == 200
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes stay open


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 60, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case, status, message", [
    ("malformed json", 400, "malformed JSON body"),
    ("malformed multipart", 400, "malformed multipart body: Missing boundary in multipart"),
    ("label studio malformed json", 400, "malformed JSON body"),
    ("json array", 422, "must be an object"),
    ("empty body", 422, "empty body"),
    ("missing image", 422, "missing image"),
    ("two sources", 422, "exactly one image source"),
    ("bad base64", 422, "not valid base64"),
    ("not an image", 422, "not a recognised image format"),
    ("truncated jpeg", 422, "corrupt image data"),
    ("too many pixels", 422, "over the limit of 600000"),
    ("threshold out of range", 422, "threshold: Input should be less than or equal to 1"),
    ("threshold not a number", 422, "threshold: Input should be a valid number"),
    ("empty label", 422, "labels must not be empty strings"),
    ("prompt on detect", 422, "takes class names in labels, not a prompt"),
    ("unknown field", 422, "thresold: unknown field; did you mean 'threshold'?"),
    ("unknown model", 404, "unknown model 'owlv9'; served models: detector (detect)"),
    ("task not served", 404, "no served model does task 'caption'"),
    ("unknown task", 404, "unknown task 'segment'"),
    ("wrong task for model", 422, "model 'detector' does task 'detect', not 'ocr'"),
    ("unsupported content type", 415, "unsupported content type 'text/plain'"),
    ("unknown format", 422, "unknown format 'xml'"),
    ("annotate without tasks", 422, "tasks: Field required"),
    ("fuse one task", 422, "fuse: fusing needs at least two entries in tasks"),
    ("fuse a pseudo-label task", 422, "fuse: tasks.1 is a pseudo-label task; fuse takes"),
    ("fuse weights", 422, "fuse.weights: 1 given for 2 tasks"),
    ("fuse min models", 422, "fuse.min_models: 3 is more than the 2 tasks fused"),
    ("fuse iou", 422, "fuse.iou: Input should be less than 1"),
    ("fuse unknown field", 422, "fuse.method: unknown field; valid fields here: "),
    ("truncated png", 422, "corrupt image data"),
    ("two images", 422, "image: sent 2 times; send it once"),
    ("a field twice", 422, "threshold: sent 2 times; send it once"),
    ("annotate parameters beside tasks", 422,
     "labels, threshold: a task's parameters go in its entry of tasks"),
    ("annotate too many tasks", 422, "tasks: List should have at most 32 items"),
    ("label studio task undecodable", 422,
     "tasks.1: image cannot be used: corrupt image data"),
    ("label studio model fills nothing", 422,
     "model 'detector' does task 'detect', whose records fill no control of this label_config"),
    ("body too large", 413, f"over the limit of {MAX_BODY}"),
    ("body too large, chunked", 413, f"over the limit of {MAX_BODY} bytes"),
])
def test_bad_input_gets_a_clear_4xx(url, http, image_files, case, status, message):
    good = base64.b64encode(image_files["wide.jpg"]).decode()
    jpeg = image_files["wide.jpg"]

    def _annotate(**fields):
        return http.post(f"{url}/v1/annotate", json={"image": good, **fields})

    def _data_url(data: bytes) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(data).decode()

    png = _png(120, 90)
    ls_boxes = ('<View><Image name="img" value="$photo"/><RectangleLabels name="box" '
                'toName="img"><Label value="car"/></RectangleLabels></View>')
    ls_ocr = ('<View><Image name="img" value="$photo"/><Polygon name="poly" toName="img"/>'
              '<TextArea name="text" toName="img"/></View>')

    send = {
        "malformed json": lambda: http.post(f"{url}/v1/detect", data=b'{"image": ',
                                            headers={"Content-Type": "application/json"}),
        "malformed multipart": lambda: http.post(
            f"{url}/v1/detect", data=b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n',
            headers={"Content-Type": "multipart/form-data"}),
        "label studio malformed json": lambda: http.post(
            f"{url}/setup", data=b'{"schema": ', headers={"Content-Type": "application/json"}),
        "json array": lambda: http.post(f"{url}/v1/detect", json=[good]),
        "empty body": lambda: http.post(f"{url}/v1/detect"),
        "missing image": lambda: http.post(f"{url}/v1/detect", json={"labels": ["cat"]}),
        "two sources": lambda: http.post(f"{url}/v1/detect", json={"image": good, "uri": "s3://images/a"}),
        "bad base64": lambda: http.post(f"{url}/v1/detect", json={"image": "not*base64!"}),
        "not an image": lambda: _detect(http, url, b"hello, I am text"),
        "truncated jpeg": lambda: _detect(http, url, jpeg[: len(jpeg) // 3]),
        "too many pixels": lambda: _detect(http, url, _png(1000, 700), "big.png"),
        "threshold out of range": lambda: http.post(f"{url}/v1/detect", json={"image": good, "threshold": 1.5}),
        "threshold not a number": lambda: _detect(http, url, jpeg, threshold="high"),
        "empty label": lambda: http.post(f"{url}/v1/detect", json={"image": good, "labels": ["cat", " "]}),
        "prompt on detect": lambda: http.post(f"{url}/v1/detect", json={"image": good, "prompt": "find cats"}),
        "unknown field": lambda: http.post(f"{url}/v1/detect", json={"image": good, "thresold": 0.3}),
        "unknown model": lambda: http.post(f"{url}/v1/detect", json={"image": good, "model": "owlv9"}),
        "task not served": lambda: http.post(f"{url}/v1/caption", json={"image": good}),
        "unknown task": lambda: http.post(f"{url}/v1/segment", json={"image": good}),
        "wrong task for model": lambda: http.post(f"{url}/v1/ocr", json={"image": good, "model": "detector"}),
        "unsupported content type": lambda: http.post(f"{url}/v1/detect", data=b"x",
                                                      headers={"Content-Type": "text/plain"}),
        "unknown format": lambda: http.post(f"{url}/v1/detect?format=xml", json={"image": good}),
        "annotate without tasks": lambda: http.post(f"{url}/v1/annotate", json={"image": good}),
        "fuse one task": lambda: _annotate(tasks=FUSED_TASKS[:1], fuse={}),
        "fuse a pseudo-label task": lambda: _annotate(
            tasks=[{"model": "detector"}, {"model": "pseudo", "caption": "a dog"}], fuse={}),
        "fuse weights": lambda: _annotate(tasks=FUSED_TASKS, fuse={"weights": [1]}),
        "fuse min models": lambda: _annotate(tasks=FUSED_TASKS, fuse={"min_models": 3}),
        "fuse iou": lambda: _annotate(tasks=FUSED_TASKS, fuse={"iou": 2}),
        "fuse unknown field": lambda: _annotate(tasks=FUSED_TASKS, fuse={"method": "nms"}),
        "truncated png": lambda: _detect(http, url, png[: len(png) // 2], "cut.png"),
        "two images": lambda: http.post(f"{url}/v1/detect", files=[
            ("image", ("a.jpg", jpeg)), ("image", ("b.jpg", jpeg))]),
        "a field twice": lambda: http.post(f"{url}/v1/detect", files={"image": ("a.jpg", jpeg)},
                                           data=[("threshold", "0.2"), ("threshold", "0.9")]),
        "annotate parameters beside tasks": lambda: _annotate(
            tasks=[{"model": "detector"}], labels=["zebra"], threshold=0.99),
        "annotate too many tasks": lambda: _annotate(tasks=[{"model": "detector"}] * 33),
        "label studio task undecodable": lambda: http.post(f"{url}/predict", json={
            "label_config": ls_boxes, "tasks": [{"data": {"photo": _data_url(jpeg)}},
                                                {"data": {"photo": _data_url(jpeg[: len(jpeg) // 3])}}]}),
        "label studio model fills nothing": lambda: http.post(
            f"{url}/predict?model=detector", json={
                "label_config": ls_ocr, "tasks": [{"data": {"photo": _data_url(jpeg)}}]}),
        "body too large": lambda: _detect(http, url, b"\xff" * (MAX_BODY + 1)),
        "body too large, chunked": lambda: http.post(
            f"{url}/v1/detect", headers={"Content-Type": "application/json"},
            data=(b"x" * 65536 for _ in range(MAX_BODY // 65536 + 2))),
    }[case]
    response = send()
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert _detect(http, url, jpeg).status_code == 200  # and the server keeps serving


@pytest.mark.parametrize("uri, status, message", [
    ("file:///etc/passwd", 403, "scheme file:// is not accepted"),
    ("http://localhost/a.jpg", 403, "scheme http:// is not accepted"),
    ("ftp://example.com/a.jpg", 403, "only https:// and s3:// URIs are fetched"),
    ("https://example.com/a.jpg", 403, "host 'example.com' is not in the server's allowed_hosts"),
    ("https://localhost/a.jpg", 403, "is not a public address"),
    ("https://127.0.0.1:8443/a.jpg", 403, "127.0.0.1 is not a public address"),
    ("https://169.254.169.254/latest/meta-data/", 403, "169.254.169.254 is not a public address"),
    ("https://10.1.2.3/a.jpg", 403, "10.1.2.3 is not a public address"),
    ("https://[::ffff:127.0.0.1]/a.jpg", 403, "is not a public address"),
    ("s3://private-bucket/a.jpg", 403, "bucket 'private-bucket' is not in the server's allowed_s3_buckets"),
    ("s3://images", 422, "expected s3://bucket/key"),
    ("https://localhost:99999/a.jpg", 422, "malformed uri"),
])
def test_uri_inputs_cannot_reach_the_server_or_its_network(url, http, uri, status, message):
    response = http.post(f"{url}/v1/detect", json={"uri": uri}, timeout=10)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_full_queue_gets_503_and_slow_requests_504(url, http, image_files):
    """`limited`: batches that wait 3 s to fill, 2 slots, 1 queued, a 0.5 s timeout. The
    server stays ready meanwhile: a model busy is not a model down (a readiness probe sent
    `ready` to it, which waited behind the full queue: 503 under load)."""
    body = {"image": base64.b64encode(image_files["wide.jpg"]).decode(), "model": "limited"}
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200  # loaded, answered
    with ThreadPoolExecutor(8) as pool:
        sent = [pool.submit(http.post, f"{url}/v1/detect", json=body, timeout=20)
                for _ in range(8)]
        time.sleep(0.3)  # the slots and the queue taken
        ready = requests.get(f"{url}/readyz", timeout=10)
        responses = [request.result() for request in sent]
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {503, 504}, statuses
    assert statuses.count(504) >= 2  # the replica's 2 slots held, then timed out
    for r in responses:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1" and "full queue" in r.json()["error"]
        else:
            assert "did not answer within 0.5 s" in r.json()["error"]
    assert _detect(http, url, image_files["wide.jpg"]).status_code == 200


def test_a_body_that_stalls_gets_408_and_does_not_hold_the_request(url, http, image_files):
    """A client that declares more bytes than it sends (or stops sending) is answered."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        started = time.perf_counter()
        conn.sendall(head.encode() + b'{"image": "')  # 11 of the 1000 bytes declared
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        waited = time.perf_counter() - started
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408", answer
    assert BODY_IDLE_S <= waited < BODY_IDLE_S + 15
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "request body stalled: no byte for 2 s after 11 of 1000 bytes"
    assert _detect(http, url, image_files["wide.jpg"]).status_code == 200
