"""Video requests of the online API over real HTTP: Serve on the session's local Ray, tiny
OWLv2, 127.0.0.1, against a tracked batch video job over the same videos.

`/v1/video` must answer with the rows the batch job wrote (frames, times, boxes, scores,
track ids, parameters), and Label Studio's `/predict` on a video task with the prediction
`labeler export --format label-studio` makes of them. A clip task's model (video-caption on
the tiny Qwen2-VL) answers with the clip job's rows.
"""

import base64
import io
import json
import re

import pyarrow.dataset as pads
import pytest
import requests

from labeler.cli import main
from labeler.config import TrackingSpec
from labeler.serve.config import ServeSpec
from labeler.testing.ports import free_port
from labeler.testing.videos import FASTSTART, X264_GOP, cut_at_keyframe, encode_video

TOKEN = "video-token-51c2"
LABELS = ["a photo of a cat", "a dog"]
THRESHOLD = 0.3
TRACK = {"max_missed": 1}
SAMPLING = {"every_n_frames": 2}  # 15 of the 30 frames of each test video
MAX_VIDEO_FRAMES = 20  # above 15, below the 30 frames of sampling every frame
MAX_VIDEO_BYTES = 64 * 1024
# Clips as the clip job cuts them: 1 s windows, 2 frames each.
CLIP = {"seconds": 1.0, "fps": 2.0}
MAX_NEW_TOKENS = 6



@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    """Two whole videos (one shown rotated) and one cut short after 20 frames."""
    d = tmp_path_factory.mktemp("serve_videos")
    h264 = encode_video(d / "a_h264.mp4", "libx264", options=X264_GOP, muxer_options=FASTSTART)
    encode_video(d / "d_rotated.mov", "libx264", count=12, rotation=90)
    (d / "e_truncated.mp4").write_bytes(cut_at_keyframe(h264, 2))
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    assert all(len(data) < MAX_VIDEO_BYTES for data in files.values())
    return {"folder": d, "files": files}


@pytest.fixture(scope="module")
def batch(ray_local, videos, tiny_owlv2, tiny_model, tmp_path_factory) -> dict:
    """The tracked batch job's rows per video, its Label Studio export's tasks, and a clip
    job's rows (run before Serve takes its CPUs)."""
    out = tmp_path_factory.mktemp("serve_video_job") / "out"
    assert main(["run", "--input", str(videos["folder"]), "--media", "video",
                 "--every-n-frames", "2", "--task", "detect", "--family", "owlv2",
                 "--model", tiny_owlv2, "--labels", ",".join(LABELS),
                 "--threshold", str(THRESHOLD), "--track", "--track-max-missed", "1",
                 "--batch-size", "4", "--output", str(out), "--no-progress"]) == 0
    rows: dict[str, list[dict]] = {}
    for row in pads.dataset(out, format="parquet").to_table().to_pylist():
        rows.setdefault(row["id"], []).append(row)
    ls = out.parent / "ls"
    assert main(["export", str(out), "--format", "label-studio", "--out", str(ls)]) == 0
    tasks = {t["data"]["labeler_id"]: t for t in json.loads((ls / "tasks.json").read_text())}
    clips = out.parent / "clips"
    assert main(["run", "--input", str(videos["folder"] / "a_h264.mp4"), "--media", "video",
                 "--task", "video-caption", "--family", "qwen2_vl",
                 "--model", tiny_model("qwen2_vl"), "--clip-seconds", str(CLIP["seconds"]),
                 "--clip-fps", str(CLIP["fps"]),
                 "--max-new-tokens", str(MAX_NEW_TOKENS), "--output", str(clips),
                 "--no-progress"]) == 0
    clip_rows = pads.dataset(clips, format="parquet").to_table().to_pylist()
    return {"rows": rows, "label_studio": tasks, "clips": clip_rows}


@pytest.fixture(scope="module")
def s3_videos(s3_server, videos) -> str:
    """The test videos in a bucket of the session's S3 server, whose settings are in this
    module's environment, which `labeler serve` hands its deployments (as a job does its
    workers). Returns the bucket."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env().items():
            env.setenv(name, value)
        client = s3_server.client()
        client.create_bucket(Bucket="serve-videos")
        for name, data in videos["files"].items():
            client.put_object(Bucket="serve-videos", Key=name, Body=data)
        yield "serve-videos"


@pytest.fixture(scope="module")
def url(ray_local, batch, tiny_owlv2, tiny_model, s3_videos):
    from ray import serve

    from labeler.serve.server import start

    model = {"family": "owlv2", "source": tiny_owlv2}
    spec = ServeSpec.model_validate({
        "host": "127.0.0.1", "port": free_port(), "api_tokens": [TOKEN],
        "models": [
            {"name": "tracker", "task": "detect", "model": model, "labels": LABELS,
             "threshold": THRESHOLD, "track": TRACK, "resources": {"num_cpus": 0.5},
             "serving": {"max_batch_size": 4, "batch_wait_timeout_s": 0.02}},
            {"name": "pseudo", "task": "pseudo-label", "model": model,
             "pseudo_label": {"vocabulary": ["cat"]}, "resources": {"num_cpus": 0.25}},
            {"name": "clipper", "task": "video-caption",
             "model": {"family": "qwen2_vl", "source": tiny_model("qwen2_vl")},
             "generation": {"max_new_tokens": MAX_NEW_TOKENS},
             "resources": {"num_cpus": 0.25}}],
        "video_sampling": SAMPLING,
        "uri": {"allowed_s3_buckets": [s3_videos]},
        "limits": {"max_video_frames": MAX_VIDEO_FRAMES, "max_video_bytes": MAX_VIDEO_BYTES,
                   "max_video_requests": 1},
        "ingress_num_cpus": 0.25,
    })
    base, _ = start(spec)
    yield base
    serve.shutdown()


@pytest.fixture(scope="module")
def http():
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield session
    session.close()


def _upload(http, url, name: str, data: bytes, **fields):
    form = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()}
    return http.post(f"{url}/v1/video", files={"video": (name, data)}, data=form, timeout=120)


def _same_frames(got: list[dict], want: list[dict]) -> None:
    """Records equal to a batch job's rows: each frame, box, score and track id."""
    assert [r["frame_index"] for r in got] == [r["frame_index"] for r in want]
    for a, b in zip(got, want):
        for key in ("timestamp_s", "video", "width", "height", "task", "model",
                    "model_family", "model_revision", "parameters", "error"):
            assert a[key] == b[key], key
        boxes, expected = a["detections"] or [], b["detections"] or []
        assert (a["detections"] is None) == (b["detections"] is None)
        assert [d["label"] for d in boxes] == [d["label"] for d in expected]
        assert [d["track_id"] for d in boxes] == [d["track_id"] for d in expected]
        for x, y in zip(boxes, expected):
            assert x["score"] == pytest.approx(y["score"], abs=1e-5)
            for key in ("x0", "y0", "x1", "y1"):
                assert x[key] == pytest.approx(y[key], abs=1e-3)


def test_video_response_equals_the_tracked_batch_jobs_rows(url, http, videos, batch):
    for name in ("a_h264.mp4", "d_rotated.mov"):
        response = _upload(http, url, name, videos["files"][name], model="tracker", id=name)
        assert response.status_code == 200, response.text
        body = response.json()
        rows = batch["rows"][name]
        _same_frames(body["records"], rows)
        assert {r["id"] for r in body["records"]} == {name}
        assert body["frames"] == body["selected_frames"] == len(rows)
        tracks = {d["track_id"] for r in rows for d in r["detections"]}
        assert body["tracks"] == len(tracks) > 0 and None not in tracks
        assert json.loads(rows[0]["parameters"])["track"] == TrackingSpec(**TRACK).model_dump()
    rotated = body["records"][0]
    assert (rotated["width"], rotated["height"]) == (48, 64)  # display size, as in the job
    # From S3, fetched by the ingress with the server's storage settings: the same rows.
    uri = "s3://serve-videos/a_h264.mp4"
    response = http.post(f"{url}/v1/video", timeout=120,
                         json={"uri": uri, "id": "a", "model": "tracker"})
    assert response.status_code == 200, response.text
    _same_frames(response.json()["records"], batch["rows"]["a_h264.mp4"])
    assert {(r["id"], r["uri"]) for r in response.json()["records"]} == {("a", uri)}


def test_s3_videos_are_read_by_range_whatever_their_size(url, http, s3_server):
    """An upload is held in memory, under max_video_bytes; an S3 video is read by range as
    a job reads it, so a larger one is labeled all the same."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        noise = np.random.default_rng(0).integers(0, 256, (10, 120, 160, 3), np.uint8)
        for pixels in noise:  # incompressible: ~20 KB a frame
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    data = buf.getvalue()
    assert len(data) > MAX_VIDEO_BYTES
    s3_server.client().put_object(Bucket="serve-videos", Key="noise.mp4", Body=data)
    response = http.post(f"{url}/v1/video", timeout=120, json={
        "uri": "s3://serve-videos/noise.mp4", "model": "tracker"})
    assert response.status_code == 200, response.text
    assert [r["frame_index"] for r in response.json()["records"]] == [0, 2, 4, 6, 8]
    uploaded = _upload(http, url, "noise.mp4", data, model="tracker")
    assert uploaded.status_code == 413
    missing = http.post(f"{url}/v1/video", timeout=30, json={
        "uri": "s3://serve-videos/none.mp4", "model": "tracker"})
    assert missing.status_code == 422
    assert missing.json()["error"] == "no object at s3://serve-videos/none.mp4"


def test_request_sampling_and_track_override_the_servers(url, http, videos, batch):
    """JSON with base64: every 3rd frame, not linked; the boxes are the batch job's on the
    frames both labelled, the parameters those of an untracked job."""
    name = "a_h264.mp4"
    response = http.post(f"{url}/v1/video", timeout=120, json={
        "task": "detect", "video": base64.b64encode(videos["files"][name]).decode(),
        "sampling": {"every_n_frames": 3}, "track": False})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["frame_index"] for r in body["records"]] == list(range(0, 30, 3))
    assert body["tracks"] is None and body["records"][0]["uri"] == "base64"
    assert all(d["track_id"] is None for r in body["records"] for d in r["detections"])
    assert "track" not in json.loads(body["records"][0]["parameters"])
    by_frame = {r["frame_index"]: r for r in batch["rows"][name]}
    both = [r for r in body["records"] if r["frame_index"] in by_frame]
    assert len(both) == 5  # frames 0, 6, 12, 18, 24
    for record in both:
        got, want = record["detections"], by_frame[record["frame_index"]]["detections"]
        assert [(d["label"], round(d["score"], 4)) for d in got] == \
            [(d["label"], round(d["score"], 4)) for d in want]
    # Other tracking settings in the request: the boxes are linked with them.
    linked = _upload(http, url, name, videos["files"][name], model="tracker",
                     track={"max_missed": 0, "min_length": 2})
    assert linked.status_code == 200, linked.text
    assert json.loads(linked.json()["records"][0]["parameters"])["track"] == \
        TrackingSpec(max_missed=0, min_length=2).model_dump()


def test_a_clip_tasks_model_answers_with_the_clip_jobs_rows(url, http, videos, batch):
    response = _upload(http, url, "a_h264.mp4", videos["files"]["a_h264.mp4"],
                       model="clipper", clip=CLIP)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["clips"], body["frames"], body["tracks"]) == (3, 0, None)
    for record, row in zip(body["records"], batch["clips"], strict=True):
        for key in ("text", "prompt", "clip_start_s", "clip_end_s", "frame_index", "video",
                    "width", "height", "parameters", "error"):
            assert record[key] == row[key], key
    assert [r["clip_start_s"] for r in body["records"]] == [0.0, 1.0, 2.0]
    # An image to a clip task's model, or no clip options: a 422 that says what to send.
    image = http.post(f"{url}/v1/annotate", timeout=10, json={
        "image": base64.b64encode(videos["files"]["a_h264.mp4"]).decode(),
        "tasks": [{"model": "clipper"}]})
    assert image.status_code == 422
    assert "labels video clips: POST the video to /v1/video" in image.json()["error"]
    unclipped = _upload(http, url, "a.mp4", videos["files"]["a_h264.mp4"], model="clipper")
    assert unclipped.status_code == 422 and "give clip.seconds" in unclipped.json()["error"]


def test_a_video_cut_short_gets_422_with_the_frames_before(url, http, videos, batch):
    name = "e_truncated.mp4"
    response = _upload(http, url, name, videos["files"][name], model="tracker")
    assert response.status_code == 422, response.text
    body = response.json()
    rows = batch["rows"][name]
    assert rows[-1]["error"] and body["error"] == f"video cannot be used: {rows[-1]['error']}"
    # The same rows as the batch job: the frames that decoded, linked, then the error row.
    _same_frames(body["records"], rows)
    assert body["frames"] == len(rows) - 1 == 10


def test_label_studio_video_task_gets_the_exports_prediction(url, http, videos, batch):
    """A video project's config (its own tag names, the task's frame rate) and a task with
    the video as a data: URL: the prediction is the one the batch job's export holds,
    regions from the config's VideoRectangle to its Video."""
    config = ('<View><Video name="clip" value="$movie" frameRate="$fps"/>'
              '<VideoRectangle name="boxes" toName="clip"/>'
              '<Labels name="kinds" toName="clip">'
              + "".join(f'<Label value="{label}"/>' for label in LABELS) + '</Labels></View>')
    name = "a_h264.mp4"
    data_url = "data:video/mp4;base64," + base64.b64encode(videos["files"][name]).decode()
    answer = http.post(f"{url}/predict", timeout=120, json={
        "label_config": config, "tasks": [{"id": 3, "data": {"movie": data_url, "fps": 10}}]})
    assert answer.status_code == 200, answer.text
    (got,) = answer.json()["results"]
    want = batch["label_studio"][name]["predictions"][0]
    assert got["model_version"] == want["model_version"]
    assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert [r["id"] for r in got["result"]] == [r["id"] for r in want["result"]]
    assert len(got["result"]) > 1
    for a, b in zip(got["result"], want["result"]):
        assert (a["from_name"], a["to_name"], a["type"]) == ("boxes", "clip", "videorectangle")
        assert a["value"]["labels"] == b["value"]["labels"]
        assert a["value"]["framesCount"] == b["value"]["framesCount"] == 30
        assert [k["frame"] for k in a["value"]["sequence"]] == \
            [k["frame"] for k in b["value"]["sequence"]]
        for x, y in zip(a["value"]["sequence"], b["value"]["sequence"]):
            assert x["enabled"] == y["enabled"]
            for key in ("x", "y", "width", "height"):
                assert x[key] == pytest.approx(y[key], abs=1e-3)
    # A video damaged part way gets the export's prediction from the frames before the
    # damage, beside a healthy task (the whole request was a 422).
    cut = "data:video/mp4;base64," + base64.b64encode(
        videos["files"]["e_truncated.mp4"]).decode()
    answer = http.post(f"{url}/predict", timeout=120, json={
        "label_config": config, "tasks": [{"data": {"movie": data_url, "fps": 10}},
                                          {"data": {"movie": cut, "fps": 10}}]})
    assert answer.status_code == 200, answer.text
    got = answer.json()["results"][1]
    want = batch["label_studio"]["e_truncated.mp4"]["predictions"][0]
    assert got["result"] and [[k["frame"] for k in r["value"]["sequence"]]
                              for r in got["result"]] == [
        [k["frame"] for k in r["value"]["sequence"]] for r in want["result"]]
    # At the config's own frame rate, frames are numbered at it: time 0.2 s is frame 6 at 25.
    fixed = config.replace('frameRate="$fps"', 'frameRate="25"')
    answer = http.post(f"{url}/predict", timeout=120, json={
        "label_config": fixed, "tasks": [{"data": {"movie": data_url}}]})
    frames = {(k["time"], k["frame"]) for r in answer.json()["results"][0]["result"]
              for k in r["value"]["sequence"]}
    assert frames and all(frame == round(time * 25) + 1 for time, frame in frames)


def test_video_requests_are_documented_and_listed(url, http):
    """OpenAPI shows /v1/video's JSON and multipart bodies, every $ref resolving in the
    document; /v1/models says where each model takes videos and how it links boxes."""
    doc = requests.get(f"{url}/openapi.json", timeout=10).json()
    body = doc["paths"]["/v1/video"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["video"]["format"] == "binary"
    assert "every_n_frames" in json.dumps(body["application/json"]["schema"])
    text = json.dumps(doc)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs <= set(doc["components"]["schemas"]) and '"$ref": "#/$defs' not in text
    models = {m["name"]: m for m in http.get(f"{url}/v1/models", timeout=10).json()["models"]}
    assert models["tracker"]["video_track"] == TrackingSpec(**TRACK).model_dump()
    assert (models["clipper"]["endpoint"], models["clipper"]["video_track"]) == ("/v1/video",
                                                                                 None)


def test_a_video_request_past_the_limit_gets_503_before_any_work(url, videos):
    """max_video_requests 1: a second video while one runs is refused at once, with
    Retry-After; the slot is free again when the first is done."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    def send(delay: float):
        time.sleep(delay)
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {TOKEN}"
            return _upload(session, url, "a.mp4", videos["files"]["a_h264.mp4"],
                           model="tracker", sampling={"every_n_frames": 1, "max_frames": 20})

    for _ in range(5):
        with ThreadPoolExecutor(2) as pool:
            # 20 frames take the tiny model about 100-300 ms: the second arrives meanwhile,
            # unless the machine was quick enough to finish the first (then try again).
            done, refused = sorted(pool.map(send, (0.0, 0.03)), key=lambda r: r.status_code)
        assert done.status_code == 200, done.text
        if refused.status_code != 200:
            break
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "1 video requests are running, this server's limit" in refused.json()["error"]
    assert send(0.0).status_code == 200


@pytest.mark.parametrize("case, status, message", [
    ("not a video", 422, "video cannot be used: "),
    ("too many frames", 422, "sampling selects 30 frames of this video, over the server's "
                             "limit of 20 a request"),
    ("bad sampling", 422, "sampling.fps"),
    ("two sampling modes", 422, "give one sampling mode, not fps and every_n_frames"),
    ("track for an untracked task", 422, "track: model 'pseudo' does task 'pseudo-label'"),
    ("track: true for an untracked task", 422, "track: model 'pseudo' does task"),
    ("clips for a frame task", 422, "clip: model 'tracker' does task 'detect', which labels "
                                    "frames"),
    ("too many clip frames", 422, "the clips of this video take 60 (3.0 s at 20 fps) frames, "
                                  "over the server's limit of 20"),
    ("too large", 413, "over the limit of 65536"),
    ("no video", 422, "missing video: send a multipart file field `video`"),
    ("malformed track", 422, "track: not valid JSON"),
    ("Label Studio video with a model that gives no tracks", 422,
     "a VideoRectangle takes the tracked boxes of tasks detect"),
    ("Label Studio task whose video does not open", 422, "tasks.1: video cannot be used: "),
    ("Label Studio task without its video", 422, "tasks.0.data.v: missing URL"),
])
def test_bad_video_requests_get_a_clear_4xx(url, http, videos, case, status, message):
    video = videos["files"]["a_h264.mp4"]
    config = ('<View><Video name="v" value="$v"/><VideoRectangle name="r" toName="v"/>'
              '</View>')
    send = {
        "not a video": lambda: _upload(http, url, "x.mp4", b"\x00" * 4096, model="tracker"),
        "too many frames": lambda: _upload(http, url, "a.mp4", video, model="tracker",
                                           sampling={"fps": 10}),
        "bad sampling": lambda: _upload(http, url, "a.mp4", video, model="tracker",
                                        sampling={"fps": 0}),
        "two sampling modes": lambda: _upload(http, url, "a.mp4", video, model="tracker",
                                              sampling={"fps": 1, "every_n_frames": 2}),
        "track for an untracked task": lambda: _upload(http, url, "a.mp4", video,
                                                       model="pseudo", track={"iou": 0.5}),
        "clips for a frame task": lambda: _upload(http, url, "a.mp4", video, model="tracker",
                                                  clip=CLIP),
        "too many clip frames": lambda: _upload(http, url, "a.mp4", video, model="clipper",
                                                clip={**CLIP, "fps": 20}),
        "track: true for an untracked task": lambda: _upload(http, url, "a.mp4", video,
                                                             model="pseudo", track=True),
        "too large": lambda: _upload(http, url, "big.mp4", b"\x00" * (MAX_VIDEO_BYTES + 1),
                                     model="tracker"),
        "no video": lambda: http.post(f"{url}/v1/video", json={"model": "tracker"}, timeout=10),
        "malformed track": lambda: _upload(http, url, "a.mp4", video, model="tracker",
                                           track="{iou"),
        "Label Studio video with a model that gives no tracks": lambda: http.post(
            f"{url}/predict?model=pseudo", timeout=10,
            json={"label_config": config, "tasks": [{"data": {"v": "s3://b/a.mp4"}}]}),
        "Label Studio task whose video does not open": lambda: http.post(
            f"{url}/predict", timeout=60, json={"label_config": config, "tasks": [
                {"data": {"v": "data:video/mp4;base64," + base64.b64encode(video).decode()}},
                {"data": {"v": "data:video/mp4;base64," + base64.b64encode(b"\0" * 99).decode()}},
            ]}),
        "Label Studio task without its video": lambda: http.post(
            f"{url}/predict", timeout=10,
            json={"label_config": config, "tasks": [{"data": {"video": "s3://b/a.mp4"}}]}),
    }[case]
    response = send()
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
