"""The online API's pure parts: config, tokens, URI rules, request bodies, tool formats,
and the frame flow of a video request."""

import asyncio
import base64
import re

import pytest

from labeler.config import SpecError, TrackingSpec
from labeler.media.video import Sampling
from labeler.serve.auth import bind_host, configured_tokens, is_authorized, presented_token
from labeler.serve.config import ServedModel, ServingSpec, UriSpec, load_serve_spec
from labeler.serve.errors import ApiError
from labeler.serve.fetch import check_address, check_uri
from labeler.serve.formats import (cvat_shapes, drawn_rectangles, label_studio_prediction,
                                   parse_label_config, percent_to_pixels, video_frame_rate)
from labeler.serve.inputs import (ImageRequest, VideoRequest, bytes_or_uri, decode_base64,
                                  image_bytes_or_uri)


# -- config ----------------------------------------------------------------------------------

def test_flags_make_a_one_model_config(tmp_path):
    spec = load_serve_spec(None, task="detect", family="owlv2", model=str(tmp_path),
                           labels=["cat", "dog"], host="0.0.0.0", port=9000, max_batch_size=4,
                           batch_wait_timeout_s=0.05, num_gpus=0.5)
    (model,) = spec.models
    assert (spec.host, spec.port, model.served_name) == ("0.0.0.0", 9000, "detect")
    assert (model.serving.max_batch_size, model.serving.batch_wait_timeout_s) == (4, 0.05)
    # on a GPU two batches run at once: 3 x batch, two running and one filling
    assert model.ongoing_limit == 12 and model.batches_at_once == 2
    assert model.resources.num_gpus == 0.5
    task = model.task_spec()
    assert type(task).__name__ == "TaskSpec" and task.labels == ["cat", "dog"]


def test_config_file_with_flags_overriding(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(f"""
port: 8100
models:
  - name: animals
    task: detect
    model: {{family: owlv2, source: {tmp_path}}}
    labels: [cat]
    serving: {{max_batch_size: 32, autoscaling: {{min_replicas: 1, max_replicas: 4}}}}
  - name: vehicles
    task: detect
    model: {{family: owlv2, source: {tmp_path}}}
    labels: [car]
""")
    spec = load_serve_spec(path, threshold=0.4, port=8200)
    assert spec.port == 8200 and [m.threshold for m in spec.models] == [0.4, 0.4]
    assert spec.models[0].serving.autoscaling.max_replicas == 4
    assert spec.model("vehicles").labels == ["car"] and spec.model("nope") is None


@pytest.mark.parametrize("overrides, message", [
    ({"task": "detect", "family": "owlv2", "model": "m", "labels": ["a", "a"]}, "models.0.labels: labels must be unique"),
    ({"task": "caption", "family": "owlv9", "model": "m"}, "models.0.model.family: unknown model family 'owlv9'"),
    ({"task": "detect", "family": "owlv2", "model": "m", "labels": ["a"], "port": 0}, "port: Input should be greater"),
    ({}, "models: Field required"),
    # The options of some tasks only, checked as a job's (not when a replica starts).
    ({"task": "caption", "family": "florence2", "model": "m", "nms": "per-label"},
     "models.0: nms applies to tasks detect, ground, regions"),
])
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(SpecError, match="invalid serve config") as err:
        load_serve_spec(None, **overrides)
    assert message in str(err.value)


def test_track_for_a_server_without_a_box_model_is_refused():
    with pytest.raises(SpecError, match=re.escape(
            "--track applies to box (detect, ground, detect-by-example) tasks, and no served "
            "model does one")):
        load_serve_spec(None, task="caption", family="florence2", model="m", track=True)


def test_a_compiled_model_is_refused_for_serving(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("models:\n  - task: detect\n    labels: [car]\n"
                      "    model: {family: owlv2, source: m, compile: true}\n")
    with pytest.raises(SpecError, match="invalid serve config") as err:
        load_serve_spec(config)
    assert "models.0: model.compile is for batch jobs" in str(err.value)


def test_a_serve_config_with_too_many_batches_at_once_is_refused_naming_the_field(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("models:\n  - task: detect\n    labels: [car]\n"
                      "    model: {family: owlv2, source: m}\n"
                      "    resources: {num_gpus: 1, concurrent_batches: 9}\n")
    with pytest.raises(SpecError, match="invalid serve config") as err:
        load_serve_spec(config)
    assert "models.0.resources.concurrent_batches" in str(err.value)
    assert "less than or equal to 8" in str(err.value)


def test_serving_limits():
    def served(resources=None, **serving):
        return ServedModel(task="detect", model={"family": "owlv2", "source": "m"},
                           labels=["car"], serving=serving, resources=resources or {})

    on_cpu = served(max_batch_size=8)
    assert (on_cpu.ongoing_limit, on_cpu.batch_limit_warning) == (16, None)  # 1 running, 1 filling
    assert served(max_batch_size=8, max_ongoing_requests=4).batch_limit_warning == (
        "max_ongoing_requests (4) is below max_batch_size (8) x the 1 batch(es) run at once: "
        "batches will hold at most 4")
    gpu = {"num_gpus": 1}
    assert served(gpu, max_batch_size=8).ongoing_limit == 24  # 2 running, 1 filling
    assert served(gpu, max_batch_size=8, max_ongoing_requests=10).batch_limit_warning == (
        "max_ongoing_requests (10) is below max_batch_size (8) x the 2 batch(es) run at once: "
        "batches will hold at most 5")
    assert served({"num_gpus": 1, "concurrent_batches": 1}, max_batch_size=8).ongoing_limit == 16
    with pytest.raises(ValueError, match="min_replicas must not exceed max_replicas"):
        ServingSpec(autoscaling={"min_replicas": 3, "max_replicas": 2})


# -- tokens ----------------------------------------------------------------------------------

def test_tokens_come_from_config_and_environment():
    env = {"LABELER_API_TOKENS": " a1 , ,b2,a1"}
    assert configured_tokens(["c3", "a1"], env) == ["c3", "a1", "b2"]
    assert configured_tokens([], {}) == []


def test_without_tokens_the_server_binds_to_loopback():
    assert bind_host("0.0.0.0", ["t"]) == ("0.0.0.0", None)
    host, notice = bind_host("0.0.0.0", [])
    assert host == "127.0.0.1" and "refusing to listen on 0.0.0.0" in notice
    host, notice = bind_host("127.0.0.1", [])
    assert host == "127.0.0.1" and "listens on 127.0.0.1 only" in notice


def test_authorization_headers():
    basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
    assert presented_token("Bearer s3cret") == presented_token(basic) == "s3cret"
    assert presented_token("Basic !!!") is None and presented_token("Token s3cret") is None
    assert is_authorized("Bearer s3cret", ["other", "s3cret"])
    assert not is_authorized("Bearer s3cre", ["s3cret"]) and not is_authorized(None, ["s3cret"])
    assert is_authorized(None, [])  # no tokens configured: open (and loopback only)


# -- URI rules -------------------------------------------------------------------------------

POLICY = UriSpec(allowed_hosts=["img.example.org"], allowed_s3_buckets=["pics"])


@pytest.mark.parametrize("uri, status, message", [
    ("file:///etc/passwd", 403, "scheme file://"),
    ("gopher://img.example.org/", 403, "only https:// and s3://"),
    ("/etc/passwd", 403, "scheme (none)"),
    ("https://evil.example.org/a.jpg", 403, "host 'evil.example.org' is not in"),
    ("https://IMG.example.org.evil.com/a.jpg", 403, "is not in the server's allowed_hosts"),
    ("s3://secrets/key", 403, "bucket 'secrets'"),
    ("s3://pics/", 422, "expected s3://bucket/key"),
    ("https:///a.jpg", 422, "no host"),
    # storage reads anything not spelled `s3://` as a local path: /etc/passwd here
    ("S3://pics/../../../../../../../../etc/passwd", 422, "in lower case: s3://"),
    # the S3 client resolves `..` before sending: bucket `secrets`, key `key`
    ("s3://pics/../secrets/key", 403, "'..' segment may leave its bucket"),
    ("s3://pics/a/./../../secrets/key", 403, "'..' segment may leave its bucket"),
    ("s3://pics//key", 403, "empty, '.' or '..' segment"),
    ("s3://pics/a.jpg?x=/../../secrets/key", 403, "'..' segment"),
])
def test_uri_refusals(uri, status, message):
    with pytest.raises(ApiError) as err:
        check_uri(uri, POLICY)
    assert err.value.status == status and message in err.value.message


def test_allowed_uris():
    assert check_uri("https://IMG.example.org/a.jpg?x=1", POLICY) == ("https", "img.example.org", 443)
    assert check_uri("s3://pics/a/b.jpg", POLICY) == ("s3", "pics", 0)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "10.0.0.5", "172.16.3.4",
                                     "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                                     "::1", "fe80::1%eth0", "fc00::1", "::ffff:10.0.0.1",
                                     "224.0.0.1", "255.255.255.255",
                                     # IPv4 carried in IPv6, reached through a translator
                                     # or tunnel: NAT64, 6to4, IPv4-compatible, SIIT
                                     "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe",
                                     "64:ff9b:1::a00:1", "2002:a9fe:a9fe::1",
                                     "::127.0.0.1", "::ffff:0:7f00:1"])
def test_non_public_addresses_are_refused(address):
    with pytest.raises(ApiError, match="is not a public address"):
        check_address(address)


def test_public_addresses_pass():
    for address in ("8.8.8.8", "2606:4700::1111"):
        check_address(address)


# -- request bodies --------------------------------------------------------------------------

def test_image_sources():
    raw = b"\x89PNG..."
    text = base64.b64encode(raw).decode()
    assert decode_base64(text) == raw
    assert decode_base64("data:image/png;base64," + text) == raw
    assert decode_base64(base64.urlsafe_b64encode(b"\xfb\xff").decode()) == b"\xfb\xff"
    wrapped = base64.encodebytes(raw * 40).decode()  # MIME: a line break every 76 characters
    assert "\n" in wrapped and decode_base64(wrapped) == raw * 40
    for bad in ("ab$d", "abc"):  # a character outside both alphabets; cut short
        with pytest.raises(ApiError, match="image is not valid base64") as err:
            decode_base64(bad)
        assert err.value.status == 422
    with pytest.raises(ApiError, match="must be base64-encoded"):
        decode_base64("data:image/png,rawbytes")
    assert image_bytes_or_uri(ImageRequest(image=text), None) == (raw, None)
    assert image_bytes_or_uri(ImageRequest(uri="s3://pics/a"), None) == (None, "s3://pics/a")
    assert image_bytes_or_uri(ImageRequest(), raw) == (raw, None)
    with pytest.raises(ApiError, match="got multipart file `image` and `uri`"):
        image_bytes_or_uri(ImageRequest(uri="s3://pics/a"), raw)


def test_video_sources_and_options():
    raw = b"\x00\x00\x00\x18ftypmp42"
    text = "data:video/mp4;base64," + base64.b64encode(raw).decode()
    req = VideoRequest(video=text, sampling={"fps": 2}, track={"iou": 0.4})
    assert bytes_or_uri(req.video, req.uri, None, "video") == (raw, None)
    assert req.sampling.sampling() == Sampling(mode="fps", fps=2.0)
    assert req.track == TrackingSpec(iou=0.4)
    assert VideoRequest(track=False).track is False and VideoRequest().track is None
    with pytest.raises(ApiError, match="missing video: send a multipart file field `video`"):
        bytes_or_uri(None, None, None, "video")
    with pytest.raises(ApiError, match="give exactly one video source, got base64 `video` and"):
        bytes_or_uri(text, "s3://clips/a.mp4", None, "video")
    with pytest.raises(ApiError, match="video is not valid base64"):
        bytes_or_uri("@@@", None, None, "video")


# -- Label Studio and CVAT -------------------------------------------------------------------

RECORD = {"width": 200, "height": 100,
          "detections": [{"label": "cat", "score": 0.75, "x0": 20.0, "y0": 10.0, "x1": 120.0, "y1": 60.0}],
          "ocr_regions": [{"text": "EXIT", "x0": 10.0, "y0": 20.0, "x1": 50.0, "y1": 20.0,
                           "x2": 50.0, "y2": 40.0, "x3": 10.0, "y3": 40.0}]}


def test_label_studio_rectangles_in_percent():
    config = parse_label_config('<View><Image name="im" value="$img"/><RectangleLabels name="lab" '
                                'toName="im"><Label value="cat"/><Label value="dog"/></RectangleLabels></View>')
    assert (config.image_name, config.image_key, config.rectangle, config.labels) == (
        "im", "img", "lab", ["cat", "dog"])
    prediction = label_studio_prediction(RECORD, config, "owlv2:m")
    assert prediction["model_version"] == "owlv2:m" and prediction["score"] == 0.75
    (box,) = prediction["result"]
    assert box["value"] == {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0,
                            "rectanglelabels": ["cat"]}
    assert (box["from_name"], box["to_name"], box["original_width"]) == ("lab", "im", 200)


def test_label_studio_ocr_as_polygon_plus_textarea():
    config = parse_label_config('<View><Image name="image" value="$ocr"/><Polygon name="poly" '
                                'toName="image"/><TextArea name="transcription" toName="image" '
                                'perRegion="true"/></View>')
    polygon, text = label_studio_prediction(RECORD, config, "v")["result"]
    assert polygon["id"] == text["id"]  # one region: outline and its text
    assert polygon["type"] == "polygon" and polygon["value"]["points"] == [
        [5.0, 20.0], [25.0, 20.0], [25.0, 40.0], [5.0, 40.0]]
    assert text["type"] == "textarea" and text["value"]["text"] == ["EXIT"]


def test_label_studio_configs_of_several_controls_and_images():
    """Several RectangleLabels: every label asked for, each box under the control offering
    its label; the image is the one the controls name (toName), not the first; a TextArea
    about the whole image (not per region) takes a caption's text."""
    from labeler.serve.app import _fills_label_config, _ls_task_kind

    config = parse_label_config(
        '<View><Image name="left" value="$a"/><Image name="right" value="$b"/>'
        '<RectangleLabels name="animals" toName="right"><Label value="cat"/>'
        '<Label value="dog"/></RectangleLabels>'
        '<RectangleLabels name="vehicles" toName="right"><Label value="car"/></RectangleLabels>'
        '<RectangleLabels name="other" toName="left"><Label value="bus"/></RectangleLabels>'
        '</View>')
    assert (config.image_name, config.image_key) == ("right", "b")
    assert config.labels == ["cat", "dog", "car"]
    record = {**RECORD, "detections": [
        {"label": "car", "score": 0.5, "x0": 0.0, "y0": 0.0, "x1": 10.0, "y1": 10.0},
        *RECORD["detections"]]}
    car, cat = label_studio_prediction(record, config, "v")["result"]
    assert (car["from_name"], cat["from_name"]) == ("vehicles", "animals")
    assert car["to_name"] == cat["to_name"] == "right"

    caption = parse_label_config('<View><Image name="im" value="$img"/>'
                                 '<TextArea name="caption" toName="im"/></View>')
    assert _ls_task_kind(caption) == "caption"
    assert _fills_label_config("caption", caption) and not _fills_label_config("detect", caption)
    (text,) = label_studio_prediction({**RECORD, "text": "a cat on a mat"}, caption,
                                      "v")["result"]
    assert (text["from_name"], text["type"], text["value"]) == (
        "caption", "textarea", {"text": ["a cat on a mat"]})


def test_label_studio_split_format_labels_beside_a_plain_rectangle():
    """<Labels> + <Rectangle> on one image (Label Studio's split format): the Labels' labels
    are asked for, and each box is a `rectangle` and a `labels` result sharing one id (the
    rectangles had no label); a drawn rectangle's label is its companion's."""
    config = parse_label_config(
        '<View><Image name="im" value="$img"/><Labels name="kind" toName="im">'
        '<Label value="cat"/><Label value="dog"/></Labels>'
        '<Rectangle name="box" toName="im"/></View>')
    assert (config.rectangle, config.region_labels, config.labels) == ("box", "kind",
                                                                      ["cat", "dog"])
    rectangle, label = label_studio_prediction(RECORD, config, "v")["result"]
    assert rectangle["id"] == label["id"]
    assert (rectangle["type"], rectangle["from_name"]) == ("rectangle", "box")
    assert "rectanglelabels" not in rectangle["value"]
    assert (label["type"], label["from_name"], label["to_name"]) == ("labels", "kind", "im")
    assert label["value"] == {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0,
                              "rotation": 0, "labels": ["cat"]}
    context = {"result": [
        {"id": "a", "type": "rectangle", "from_name": "box",
         "value": {"x": 10, "y": 20, "width": 30, "height": 40}},
        {"id": "a", "type": "labels", "from_name": "kind",
         "value": {"x": 10, "y": 20, "width": 30, "height": 40, "labels": ["dog"]}},
        {"id": "b", "type": "rectangle", "from_name": "box",
         "value": {"x": 0, "y": 0, "width": 5, "height": 5}}]}
    assert drawn_rectangles(context, config) == [("dog", (10.0, 20.0, 40.0, 60.0)),
                                                 ("object", (0.0, 0.0, 5.0, 5.0))]
    # Labels on a text beside the image, or a RectangleLabels carrying its own: unchanged.
    for xml in ('<View><Image name="im" value="$img"/><Text name="t" value="$txt"/>'
                '<Labels name="ner" toName="t"><Label value="PER"/></Labels>'
                '<Rectangle name="box" toName="im"/></View>',
                '<View><Image name="im" value="$img"/><Labels name="kind" toName="im">'
                '<Label value="dog"/></Labels><RectangleLabels name="box" toName="im">'
                '<Label value="cat"/></RectangleLabels></View>'):
        other = parse_label_config(xml)
        assert other.region_labels is None
        assert [r["type"] for r in label_studio_prediction(RECORD, other, "v")["result"]] == [
            other.rectangle_type]


VIDEO_CONFIG = ('<View><Header value="Track"/><Video name="clip" value="$movie" frameRate="$fps"/>'
                '<VideoRectangle name="box" toName="clip"/><Labels name="kinds" toName="clip">'
                '<Label value="car"/><Label value="person"/></Labels></View>')


def test_label_studio_video_config():
    config = parse_label_config(VIDEO_CONFIG)
    assert (config.video_name, config.video_key, config.frame_rate, config.video_rectangle,
            config.labels, config.rectangle) == ("clip", "movie", "$fps", "box",
                                                 ["car", "person"], None)


@pytest.mark.parametrize("attribute, data, probed, rate", [
    ('frameRate="$fps"', {"fps": 12.5}, 30.0, 12.5),  # the task's own
    ('frameRate="$fps"', {"fps": "25"}, 30.0, 25.0),  # as Label Studio stores a CSV import
    ('frameRate="$fps"', {}, 30.0, 30.0),  # not in the task: the video's
    ('frameRate="$fps"', {"fps": "n/a"}, None, 24.0),  # neither: Label Studio's default
    ('frameRate="25"', {"fps": 10}, 30.0, 25.0),  # the config's number
    ('frameRate="0"', {}, 30.0, 24.0),
    ('', {"fps": 10}, 30.0, 24.0),  # no frameRate: Label Studio plays at its default
])
def test_label_studio_video_frame_rate(attribute, data, probed, rate):
    config = parse_label_config(VIDEO_CONFIG.replace('frameRate="$fps"', attribute))
    assert video_frame_rate(config, data, probed, 24.0) == rate


def test_label_config_errors():
    with pytest.raises(ValueError, match="label_config is not valid XML"):
        parse_label_config("<View><Image")
    big = '<View><Image name="i" value="$i"/>' + " " * (1 << 20) + "</View>"  # kept by /setup
    with pytest.raises(ValueError, match=r"label_config: 1048617 characters, over the limit "
                                         r"of 1048576"):
        parse_label_config(big)


def test_cvat_shapes():
    rect, poly = cvat_shapes(RECORD)
    assert rect == {"type": "rectangle", "label": "cat", "confidence": "0.75",
                    "points": [20.0, 10.0, 120.0, 60.0]}
    assert poly["type"] == "polygon" and poly["points"] == [10.0, 20.0, 50.0, 20.0, 50.0, 40.0, 10.0, 40.0]
    assert poly["attributes"] == [{"name": "text", "value": "EXIT"}] and "confidence" not in poly


def test_a_detector_may_be_served_without_labels(tmp_path):
    """The acceptance command gives no --labels: each request brings them."""
    (model,) = load_serve_spec(None, task="detect", family="owlv2", model=str(tmp_path)).models
    assert model.labels == [] and model.labels_per_request
    assert model.task_spec().labels == ["object"]  # what the replica loads with
    (labelled,) = load_serve_spec(None, task="detect", family="owlv2", model=str(tmp_path),
                                  labels=["cat"]).models
    assert not labelled.labels_per_request and labelled.task_spec().labels == ["cat"]
    with pytest.raises(SpecError, match="takes class names in labels, not a prompt"):
        load_serve_spec(None, task="detect", family="owlv2", model=str(tmp_path), prompt="cats")


def test_request_labels_keep_the_served_queries_and_label_thresholds(tmp_path):
    """A request's labels that the served model also has keep its queries and thresholds;
    the others are asked by name at the request's (or the served) threshold."""
    from labeler.serve.variants import variant_spec

    config = tmp_path / "serve.yaml"
    config.write_text(f"""
models:
  - task: detect
    model: {{family: owlv2, source: {tmp_path}}}
    labels: [car, cyclist]
    queries: {{car: [car, automobile], cyclist: ["a person riding a bicycle"]}}
    label_thresholds: {{cyclist: 0.4}}
""")
    (served,) = load_serve_spec(config).models
    spec = variant_spec(served, ["cyclist", "dog"], 0.2)
    assert spec.label_queries() == [["a person riding a bicycle"], ["dog"]]
    assert (spec.threshold_for("cyclist"), spec.threshold_for("dog")) == (0.4, 0.2)
    assert variant_spec(served, None, 0.3).queries == served.queries  # labels as served


def test_deployment_options_come_from_the_config(tmp_path):
    from labeler.serve.app import build_app

    path = tmp_path / "serve.yaml"
    path.write_text("models: [{serving: {autoscaling: {min_replicas: 1, max_replicas: 3}}}]")
    spec = load_serve_spec(path, task="detect", family="owlv2", model=str(tmp_path), labels=["a"],
                           num_gpus=0.25, max_batch_size=12)
    app = build_app(spec, ["t"])
    # The ingress's bound arguments hold the model deployments (Serve's own objects).
    (model_app,) = app._bound_deployment.init_args[2].values()
    deployment = model_app._bound_deployment
    assert deployment.ray_actor_options == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert deployment._deployment_config.max_ongoing_requests == 36  # 2 running, 1 filling
    assert deployment._deployment_config.max_queued_requests == 256
    assert deployment._deployment_config.autoscaling_config.max_replicas == 3


# -- the frames of a video request -----------------------------------------------------------

def _clip(tmp_path) -> bytes:
    from labeler.testing.videos import encode_video

    return open(encode_video(tmp_path / "a.mp4", "libx264", count=30, rate=10), "rb").read()


def test_a_videos_frames_go_to_the_model_in_order_a_bounded_number_at_once(tmp_path):
    """Every sampled frame is annotated, in time order, never more than in_flight at once,
    while the video still decodes."""
    import asyncio

    from labeler.serve.video import label_video, position_fields

    busy, most = 0, 0

    async def annotate(row):
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.01)
        busy -= 1
        return {"error": None, "detections": [], **position_fields(row)}

    video = asyncio.run(label_video(_clip(tmp_path), Sampling("every_n_frames", every_n_frames=3),
                                    None, 10**8, 10, annotate, in_flight=3))
    assert [r["frame_index"] for r in video.records] == list(range(0, 30, 3))
    assert [r["timestamp_s"] for r in video.records] == pytest.approx([i / 10 for i in
                                                                       range(0, 30, 3)])
    assert most == 3 and video.selected == 10 and video.error is None


def test_a_video_request_stops_at_the_frame_limit_and_at_a_models_refusal(tmp_path):
    import asyncio

    from labeler.serve.video import label_video

    data = _clip(tmp_path)
    calls = []

    async def annotate(row):
        calls.append(row.frame_index)
        return {"error": None}

    with pytest.raises(ApiError, match="sampling selects 30 frames of this video, over the "
                                       "server's limit of 29 a request"):
        asyncio.run(label_video(data, Sampling("all"), None, 10**8, 29, annotate, in_flight=4))
    assert calls == []  # refused before any frame reached the model

    async def full_queue(row):
        await asyncio.sleep(0.001 * row.frame_index)
        if row.frame_index == 2:
            raise ApiError(503, "model 'm' has a full queue")
        calls.append(row.frame_index)
        return {"error": None}

    with pytest.raises(ApiError, match="full queue"):
        asyncio.run(label_video(data, Sampling("all"), None, 10**8, 30, full_queue, in_flight=2))
    assert 2 not in calls and len(calls) < 29  # the rest were cancelled, not labelled
    with pytest.raises(ApiError, match="video cannot be used: .*empty file"):
        asyncio.run(label_video(b"", Sampling("all"), None, 10**8, 30, annotate, in_flight=2))


def test_a_video_requests_track_and_clip_options_against_its_model():
    from labeler.config import ClipSpec
    from labeler.serve.config import ServedModel
    from labeler.serve.video import video_clip, video_track

    detector = ServedModel(task="detect", model={"family": "owlv2", "source": "m"},
                           labels=["car"], track={"max_missed": 1})
    captioner = ServedModel(task="video-caption", model={"family": "qwen2_vl", "source": "m"})
    asked = TrackingSpec(iou=0.5)
    assert video_track(detector, None) == video_track(detector, True) == TrackingSpec(
        max_missed=1)
    assert video_track(detector, asked) == asked and video_track(detector, False) is None
    assert video_track(captioner, None) is None and video_track(captioner, False) is None
    for wrong in (True, asked):
        with pytest.raises(ApiError, match="track: model 'video-caption' does task"):
            video_track(captioner, wrong)
    clip, server = ClipSpec(seconds=2), ClipSpec(seconds=10)
    assert video_clip(detector, None, True, server) is None
    assert video_clip(captioner, clip, False, server) == clip
    assert video_clip(captioner, None, False, server) == server
    for args, message in [((detector, clip, False, server), "clip: model 'detect' does task "
                                                             "'detect', which labels frames"),
                          ((captioner, None, True, server), "sampling: model 'video-caption'"),
                          ((captioner, None, False, None), "give clip.seconds")]:
        with pytest.raises(ApiError, match=message):
            video_clip(*args)


# ------------------------------------------------ boxes drawn as examples (detect-by-example)


def test_drawn_rectangles_of_a_label_studio_context():
    config = parse_label_config(
        '<View><Image name="img" value="$image"/><RectangleLabels name="box" toName="img">'
        '<Label value="cup"/></RectangleLabels><KeyPointLabels name="kp" toName="img"/></View>')
    context = {"result": [
        {"type": "rectanglelabels", "from_name": "box",
         "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rectanglelabels": ["cup"]}},
        {"type": "keypointlabels", "from_name": "kp", "value": {"x": 1, "y": 2}},
        {"type": "rectanglelabels", "from_name": "other", "value": {
            "x": 0, "y": 0, "width": 5, "height": 5, "rectanglelabels": ["plate"]}},
        {"type": "rectanglelabels", "value": {"x": 50, "y": 50, "width": 10, "height": 10,
                                              "rotation": 0, "rectanglelabels": ["plate"]}}]}
    assert drawn_rectangles(context, config) == [("cup", (10.0, 20.0, 40.0, 60.0)),
                                                 ("plate", (50.0, 50.0, 60.0, 60.0))]
    plain = parse_label_config('<View><Image name="img" value="$image"/>'
                               '<Rectangle name="r" toName="img"/></View>')
    assert drawn_rectangles({"result": [{"type": "rectangle", "value": {
        "x": 0, "y": 0, "width": 50, "height": 50}}]}, plain) == [("object", (0.0, 0.0, 50.0, 50.0))]
    assert percent_to_pixels((10.0, 20.0, 40.0, 100.0001), 200, 100) == (20.0, 20.0, 80.0, 100.0)
    for bad, message in [(None, "context.result: a list"),
                         ({"result": [{"type": "rectanglelabels", "value": {"x": 1}}]},
                          "x, y, width and height"),
                         ({"result": []}, "no rectangle drawn")]:
        with pytest.raises(ValueError, match=message):
            drawn_rectangles(bad, config)


def test_example_boxes_must_lie_inside_the_image():
    from labeler.models.base import Example
    from labeler.serve.inputs import check_example_boxes

    check_example_boxes((Example("a", (0, 0, 200, 100)), Example("b", (5, 5, 6, 6))), 200, 100)
    for box in [(0, 0, 201, 100), (-1, 0, 10, 10), (10, 10, 10, 20), (10, 20, 20, 10)]:
        with pytest.raises(ApiError, match=r"tasks.2.examples.1.box: .* inside the 200x100"):
            check_example_boxes((Example("a", (0, 0, 1, 1)), Example("b", box)), 200, 100,
                                "tasks.2.")


def test_models_needing_more_gpus_together_than_a_local_ray_has_are_named():
    from labeler.serve.config import ServeSpec
    from labeler.serve.server import check_local_gpus

    model = {"task": "detect", "model": {"family": "owlv2", "source": "some/owlv2"},
             "labels": ["cat"], "resources": {"num_gpus": 0.75}}
    spec = ServeSpec.model_validate({"models": [model, {**model, "name": "second"}]})
    check_local_gpus(spec, 2)
    with pytest.raises(SpecError, match=r"models\.1\.resources\.num_gpus: 1 replica\(s\) of "
                                        r"0\.75 GPU each \(with the models before it, 1\.5 GPUs\)"):
        check_local_gpus(spec, 1)
    scaled = ServeSpec.model_validate({"models": [{**model, "serving": {
        "autoscaling": {"min_replicas": 0, "max_replicas": 4}}}]})
    check_local_gpus(scaled, 1)  # no replica until requests come, then one that fits
    with pytest.raises(SpecError, match=r"models\.0\.resources\.num_gpus: a replica needs "
                                        r"0\.75 GPU, but this machine's Ray has 0 \(no CUDA"):
        check_local_gpus(scaled, 0)


def test_label_studio_files_come_from_the_configured_label_studio_only(monkeypatch):
    """No Label Studio configured: 422 saying what to set; a file over the limit: 413; a
    wrong token: 422 naming LABEL_STUDIO_API_KEY (a real HTTP server on 127.0.0.1)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from labeler.serve.config import UriSpec
    from labeler.serve.errors import ApiError
    from labeler.serve.fetch import fetch_label_studio_file

    class Files(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.headers.get("Authorization") != "Token good":
                self.send_error(401)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 2048)

        def log_message(self, *args):
            pass

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "good")
    with pytest.raises(ApiError, match="knows no Label Studio to fetch it from") as err:
        fetch_label_studio_file("/data/upload/1/a.jpg", UriSpec(), 10_000)
    assert err.value.status == 422
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = UriSpec(label_studio_url=f"http://127.0.0.1:{server.server_port}")
        assert fetch_label_studio_file("/data/upload/1/a.jpg", policy, 10_000) == b"x" * 2048
        with pytest.raises(ApiError, match="is larger than 1024 bytes") as err:
            fetch_label_studio_file("/data/upload/1/a.jpg", policy, 1024)
        assert err.value.status == 413
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "bad")
        with pytest.raises(ApiError, match="HTTP 401 .*is LABEL_STUDIO_API_KEY a valid token"):
            fetch_label_studio_file("/data/local-files/?d=a.jpg", policy, 10_000)
    finally:
        server.shutdown()


@pytest.mark.parametrize("task, family", [("caption", "blip2"), ("ask", "qwen2_vl"),
                                          ("ocr", "florence2")])
def test_a_threshold_for_a_text_task_is_refused_naming_the_field(task, family):
    """A caption's, answer's or OCR line's record holds no scored box: a `threshold` there
    was accepted and ignored (and Florence-2 stored it in the record's parameters)."""
    from types import SimpleNamespace

    from labeler.serve.app import Ingress
    from labeler.serve.inputs import Params

    served = ServedModel.model_validate({"name": "text", "task": task, "prompt": (
        "what is it?" if task == "ask" else None), "model": {"family": family, "source": "x"}})
    with pytest.raises(ApiError) as err:
        Ingress._item_params(SimpleNamespace(), served, Params(threshold=0.7))
    assert (err.value.status, err.value.message) == (
        422, f"threshold: model 'text' does task '{task}', whose records hold no scored boxes")


def test_openapi_documents_the_error_body_the_server_sends():
    """Generated clients read errors as OpenAPI says: {"error": "..."} for every error status
    (FastAPI documented 422 as its own {"detail": [...]}, which this server never sends)."""
    from labeler.serve.app import api

    spec = api.openapi()
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path in ("/v1/detect", "/v1/caption", "/v1/annotate", "/v1/video", "/predict"):
        responses = spec["paths"][path]["post"]["responses"]
        for status in ("400", "413", "422", "502", "503"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)


def test_a_replica_that_died_is_a_503_and_any_fault_a_json_500():
    """A model replica killed (out of memory) answered a plain-text "Internal Server Error";
    it is a 503 with Retry-After (Serve restarts it), and any unexpected fault a JSON 500."""
    import json

    from ray.exceptions import ActorDiedError

    from labeler.serve.app import _unexpected_error
    from labeler.serve.limits import call_with_limits

    async def died():
        raise ActorDiedError()

    with pytest.raises(ApiError) as err:
        asyncio.run(call_with_limits(died(), 5.0, "owl"))
    assert (err.value.status, err.value.headers) == (503, {"Retry-After": "1"})
    assert err.value.message.startswith("model 'owl': the replica answering stopped "
                                        "(ActorDiedError)")
    response = asyncio.run(_unexpected_error(None, KeyError("x")))
    assert response.status_code == 500
    assert json.loads(response.body) == {"error": "internal server error: KeyError"}


def test_an_s3_uri_never_reads_a_local_file(tmp_path, monkeypatch):
    """`S3://` (not the exact `s3://` storage recognises) was read as a local path relative
    to the working directory: `S3://pics/../../etc/passwd` returned /etc/passwd."""
    from labeler.serve.fetch import fetch_uri

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"local bytes")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for uri in ("S3://pics/../../secret.png", "S3://pics/../../../" + str(secret)[1:]):
        with pytest.raises(ApiError) as err:
            fetch_uri(uri, POLICY, 10_000)
        assert err.value.status == 422 and "lower case" in err.value.message


def test_label_studio_paths_cannot_leave_its_file_folders(monkeypatch):
    """A task's path is checked before any request: `..` (plain or percent-encoded) would
    send the operator's Label Studio token to another of its endpoints."""
    from labeler.serve.fetch import fetch_label_studio_file

    policy = UriSpec(label_studio_url="http://127.0.0.1:9")  # nothing listens: no request
    for path in ("/data/upload/../../api/users", "/data/upload/%2e%2e/%2E%2E/api/users",
                 "/data/local-files/../../api/projects?d=a.jpg", "/data/upload/..\\..\\api"):
        with pytest.raises(ApiError, match="is not one of its files") as err:
            fetch_label_studio_file(path, policy, 10_000)
        assert err.value.status == 422
    with pytest.raises(ApiError, match="cannot fetch"):  # a file path: fetched
        fetch_label_studio_file("/data/local-files/?d=../x/a.jpg", policy, 10_000)


def test_a_requests_labels_and_texts_are_limited():
    """10^5 labels (about a megabyte of JSON) were encoded at once by the model replica."""
    from labeler.serve.app import MAX_REQUEST_LABELS, MAX_REQUEST_TEXT_CHARS, _check_request_size
    from labeler.serve.inputs import Params

    _check_request_size(Params(labels=[f"l{i}" for i in range(MAX_REQUEST_LABELS)]))
    for params, message in (
            (Params(labels=[f"l{i}" for i in range(MAX_REQUEST_LABELS + 1)]), "labels: 1001"),
            (Params(labels=["x" * (MAX_REQUEST_TEXT_CHARS + 1)]), "labels: a text of"),
            (Params(prompt="x" * (MAX_REQUEST_TEXT_CHARS + 1)), "prompt: a text of"),
            (Params(caption="x" * (MAX_REQUEST_TEXT_CHARS + 1)), "caption: a text of")):
        with pytest.raises(ApiError, match=message) as err:
            _check_request_size(params)
        assert err.value.status == 422


def test_json_nested_past_the_parsers_depth_is_a_malformed_body():
    """json.loads raises RecursionError (no JSONDecodeError) for deep nesting: it was an
    unhandled error (500), and a job's manifest or tar .json with it stopped the job."""
    from starlette.requests import Request

    from labeler.serve.inputs import parse_request

    body = b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return sent.pop(0)

    request = Request({"type": "http", "method": "POST", "path": "/v1/detect",
                       "headers": [(b"content-type", b"application/json")]}, receive)
    with pytest.raises(ApiError, match="malformed JSON body") as err:
        asyncio.run(parse_request(request, ImageRequest, 10**7, 5.0))
    assert err.value.status == 400


def test_label_studio_fetch_failures_say_whose_they_are(monkeypatch):
    """A file Label Studio lacks is the task's fault (422); a refused token, Label Studio's
    own error or no Label Studio at all is the server's side (502), which a client retries."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from labeler.serve.fetch import fetch_label_studio_file

    class Files(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_error({"/data/upload/1/a.jpg": 404, "/data/upload/1/b.jpg": 401}.get(
                self.path, 500))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = UriSpec(label_studio_url=f"http://127.0.0.1:{server.server_port}")
        for path, status, says in (("/data/upload/1/a.jpg", 422, "HTTP 404"),
                                   ("/data/upload/1/b.jpg", 502, "a valid token"),
                                   ("/data/upload/1/c.jpg", 502, "HTTP 500")):
            with pytest.raises(ApiError, match=says) as err:
                fetch_label_studio_file(path, policy, 10_000)
            assert err.value.status == status, (path, err.value.message)
    finally:
        server.shutdown()
    with pytest.raises(ApiError, match="ConnectionRefusedError") as err:
        fetch_label_studio_file("/data/upload/1/a.jpg",
                                UriSpec(label_studio_url="http://127.0.0.1:9"), 10_000)
    assert err.value.status == 502


def test_an_s3_store_that_cannot_be_reached_is_a_502(monkeypatch):
    """The bucket is the operator's (allowed_s3_buckets, AWS_ENDPOINT_URL): its failure is
    not the caller's to mend."""
    import socket

    from labeler.serve.fetch import fetch_uri

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(ApiError, match="cannot fetch uri") as err:
        fetch_uri("s3://photos/a.jpg", UriSpec(allowed_s3_buckets=["photos"]), 10_000)
    assert err.value.status == 502


def test_a_pixel_budget_lets_decodes_in_first_come_first_served():
    """Decodes over the budget wait; a large image is not passed over by small ones that
    would fit beside the decodes running; a cancelled wait gives its turn on."""
    from labeler.serve.limits import PixelBudget

    async def scenario():
        budget, order = PixelBudget(100), []

        async def decode(name: str, pixels: int, seconds: float):
            async with budget.hold(pixels):
                order.append((name, budget.in_use))
                await asyncio.sleep(seconds)

        first = asyncio.create_task(decode("a", 60, 0.05))
        await asyncio.sleep(0)
        large = asyncio.create_task(decode("large", 80, 0))  # waits for a
        await asyncio.sleep(0)
        small = asyncio.create_task(decode("small", 20, 0))  # fits now, yet waits its turn
        await asyncio.sleep(0)
        gone = asyncio.create_task(decode("gone", 100, 0))
        await asyncio.sleep(0)
        gone.cancel()
        huge = asyncio.create_task(decode("huge", 10_000, 0))  # over the budget: alone
        await asyncio.gather(first, large, small, huge)
        assert gone.cancelled()
        return order, budget.in_use

    import asyncio

    order, left = asyncio.run(scenario())
    # small (20) fitted beside a (60), yet went in with large, after it.
    assert order == [("a", 60), ("large", 100), ("small", 100), ("huge", 100)]
    assert left == 0


def test_the_ingress_decodes_no_more_pixels_at_once_than_its_budget(monkeypatch):
    """cores + 4 threads decoded at once whatever the images' sizes (a 49-megapixel PNG
    takes 750 MB while it decodes): the ingress holds each image's pixels, read from its
    header, while it decodes."""
    import asyncio
    import io
    import threading
    import time
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    import labeler.serve.app as app
    from labeler.serve.config import LimitsSpec, ServeSpec
    from labeler.serve.limits import PixelBudget

    def png(width: int, height: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    running, peak, lock = [0], [0], threading.Lock()
    real_decode = app.decode_image

    def counted_decode(*args):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)  # long enough that decodes let in together overlap
        try:
            return real_decode(*args)
        finally:
            with lock:
                running[0] -= 1

    # Serve's ingress decorator rebuilt the class's functions with globals of their own.
    monkeypatch.setitem(app.Ingress._image.__globals__, "decode_image", counted_decode)
    spec = ServeSpec(models=[{"task": "caption", "model": {"family": "blip2", "source": "x"}}],
                     limits=LimitsSpec(max_decoding_pixels=2 * 640 * 480))
    served = spec.models

    async def decode_all(images: list[bytes]):
        ingress = SimpleNamespace(spec=spec, decoding=PixelBudget(
            spec.limits.max_decoding_pixels))
        return await asyncio.gather(*(app.Ingress._image(ingress, data, None, served)
                                      for data in images))

    results = asyncio.run(decode_all([png(640, 480)] * 6))
    assert peak[0] == 2 and len(results) == 6
    assert all(d.width == 640 for d, _ in results)
    peak[0] = 0
    asyncio.run(decode_all([png(64, 48)] * 6))  # small images: all at once
    assert peak[0] == 6

    async def one_dropped(images: list[bytes]):
        """The first request's client goes away while its image decodes."""
        ingress = SimpleNamespace(spec=spec, decoding=PixelBudget(
            spec.limits.max_decoding_pixels))
        first = asyncio.ensure_future(app.Ingress._image(ingress, images[0], None, served))
        await asyncio.sleep(0.03)
        first.cancel()
        return await asyncio.gather(*(app.Ingress._image(ingress, data, None, served)
                                      for data in images[1:]))

    peak[0] = 0
    assert len(asyncio.run(one_dropped([png(1280, 480)] * 3))) == 2
    assert peak[0] == 1  # the dropped request's decode still held its pixels


def test_the_ingress_decodes_whole_images_for_dynamic_resolution_models():
    """As a job does (decode_side_for_tasks): a Qwen2-VL model gets a 2400x1600 JPEG whole,
    a Florence-2 one reduced to 1200x800, and limits.decode_min_side, when set, rules; the
    replica gets the spec with unset fields unset, so it tells the two apart."""
    import asyncio
    import io
    from types import SimpleNamespace

    import labeler.serve.app as app
    from labeler.serve.config import ServeSpec
    from labeler.serve.limits import PixelBudget
    from labeler.testing.samples import synthetic_image

    buf = io.BytesIO()
    synthetic_image(2400, 1600, seed=3).save(buf, "JPEG", quality=90)

    def decoded_shape(family: str, **limits) -> tuple:
        spec = ServeSpec(models=[{"task": "caption", "model": {"family": family,
                                                               "source": "x"}}],
                         **({"limits": limits} if limits else {}))
        spec = ServeSpec.model_validate_json(spec.model_dump_json(exclude_unset=True))
        ingress = SimpleNamespace(spec=spec, decoding=PixelBudget(10**9))
        decoded, _ = asyncio.run(app.Ingress._image(ingress, buf.getvalue(), None,
                                                    spec.models))
        return decoded.pixels.shape

    assert decoded_shape("qwen2_vl") == decoded_shape("ovis2") == (1600, 2400, 3)
    assert decoded_shape("florence2") == (800, 1200, 3)
    assert decoded_shape("qwen2_vl", decode_min_side=1008) == (800, 1200, 3)
