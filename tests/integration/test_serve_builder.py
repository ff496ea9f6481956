"""The application a Serve config (or KubeRay's RayService) names, labeler.serve.builder:
build_app, run by Serve itself on the session's local Ray and asked over real HTTP."""


import requests

from labeler.serve.builder import build_app
from labeler.testing.ports import free_port
from labeler.testing.samples import jpeg_bytes, synthetic_image

TOKEN = "builder-token-51c2"



def test_serve_runs_the_built_application(ray_local, tiny_owlv2, monkeypatch):
    from ray import serve

    monkeypatch.setenv("LABELER_API_TOKENS", TOKEN)  # as the RayService's secret gives it
    args = {"models": [{"name": "detector", "task": "detect",
                        "model": {"family": "owlv2", "source": tiny_owlv2},
                        "labels": ["cat", "dog"], "threshold": 0.05,
                        "resources": {"num_cpus": 0.5}}],
            "ingress_num_cpus": 0.25}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(args), name="labeler", route_prefix="/")  # returns once healthy
        assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        image = jpeg_bytes(synthetic_image(120, 90, seed=3))
        response = requests.post(f"{url}/v1/detect", timeout=30,
                                 headers={"Authorization": f"Bearer {TOKEN}"},
                                 files={"image": ("a.jpg", image)})
        assert response.status_code == 200, response.text
        record = response.json()
        assert (record["task_name"], record["width"], record["height"]) == ("detector", 120, 90)
        assert record["detections"] and record["error"] is None
        assert requests.post(f"{url}/v1/detect", timeout=30,
                             files={"image": ("a.jpg", image)}).status_code == 401
    finally:
        serve.shutdown()
