"""Online video figures: one POST /v1/video against a client that decodes the same frames
itself and sends each as a JPEG to POST /v1/detect (what a hand-written annotation-tool
backend does), on the tiny OWLv2.

Everything runs on this machine: a local Ray, the Serve application on 127.0.0.1, and the
client. The video is made here (H.264, a key frame every 2 s) and sampled at --fps.

    .venv/bin/python benchmarks/serve_video.py                       # 60 s of 640x360 at 2 fps
    .venv/bin/python benchmarks/serve_video.py --seconds 120 --width 1280 --height 720

Printed: the frames labelled, the wall time of each way, and frames per second; for the
video request also the time the decode alone takes in one process (labeler.jobs.video
.video_rows, as the ingress runs it), so the rest is the model and the plumbing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import requests  # noqa: E402
from PIL import Image  # noqa: E402

from labeler.jobs.stages import TaskTransforms  # noqa: E402
from labeler.jobs.video import video_rows  # noqa: E402
from labeler.media.video import Sampling  # noqa: E402
from labeler.serve.config import ServeSpec  # noqa: E402
from labeler.testing import build_tiny_model  # noqa: E402
from labeler.testing.ports import free_port  # noqa: E402
from labeler.testing.samples import jpeg_bytes  # noqa: E402
from labeler.testing.videos import X264_GOP, encode_video  # noqa: E402

LABELS = ["a photo of a cat", "a photo of a dog", "a car"]
THRESHOLD = 0.9  # as benchmarks/serve_load.py: responses near a real model's size
RATE = 30  # frames per second of the video made



def frames_as_images(url: str, jpegs: list[bytes], clients: int) -> float:
    """Wall seconds to send every JPEG to /v1/detect from `clients` threads."""
    todo = list(enumerate(jpegs))
    lock = threading.Lock()
    failed = []

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not todo:
                    break
                n, data = todo.pop()
            response = session.post(f"{url}/v1/detect", timeout=60,
                                    files={"image": (f"{n}.jpg", data)})
            if response.status_code != 200:
                failed.append(response.status_code)
        session.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        sys.exit(f"/v1/detect failed: {failed[:5]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="video length")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=2.0, help="frames labelled a second")
    parser.add_argument("--clients", type=int, default=8, help="threads of the image client")
    parser.add_argument("--image-size", type=int, default=96, help="tiny OWLv2 input size")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--model-cpus", type=float, default=1.0, help="CPUs of the replica")
    args = parser.parse_args()

    import ray
    from ray import serve

    from labeler.serve.server import start

    work = Path(tempfile.gettempdir()) / "labeler-serve-bench"
    model_dir = work / f"owlv2-{args.image_size}"
    if not (model_dir / "config.json").exists():
        build_tiny_model("owlv2", model_dir, image_size=args.image_size)
    video = work / f"video-{args.seconds}s-{args.width}x{args.height}.mp4"
    if not video.exists():
        encode_video(video, "libx264", count=args.seconds * RATE, rate=RATE,
                     options=X264_GOP, width=args.width, height=args.height)
    data = video.read_bytes()
    sampling = Sampling("fps", fps=args.fps)

    start_decode = time.perf_counter()
    frames = [row.images["image"] for row in video_rows(data, sampling, None, 10**9,
                                                        TaskTransforms())]
    decode_s = time.perf_counter() - start_decode
    jpegs = [jpeg_bytes(Image.fromarray(pixels)) for pixels in frames]

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    print(f"# {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"# {os.cpu_count()} cores; tiny OWLv2 at {args.image_size} px; {args.seconds} s of "
          f"{args.width}x{args.height} H.264 at {RATE} fps ({len(data) / 2**20:.1f} MiB), "
          f"{args.fps:g} fps sampled: {len(frames)} frames; replica {args.model_cpus:g} CPU, "
          f"batches of up to {args.max_batch_size}")
    try:
        spec = ServeSpec.model_validate({
            "host": "127.0.0.1", "port": free_port(),
            "models": [{"name": "detector", "task": "detect",
                        "model": {"family": "owlv2", "source": str(model_dir)},
                        "labels": LABELS, "threshold": THRESHOLD, "preprocess": "fast",
                        "resources": {"num_cpus": args.model_cpus},
                        "serving": {"max_batch_size": args.max_batch_size,
                                    "batch_wait_timeout_s": 0.005}}],
            "video_sampling": {"fps": args.fps}})
        url, _ = start(spec)
        session = requests.Session()
        frames_as_images(url, jpegs[:16], args.clients)  # warm-up: connections, first batches
        began = time.perf_counter()
        response = session.post(f"{url}/v1/video", timeout=600,
                                files={"video": (video.name, data)})
        video_s = time.perf_counter() - began
        if response.status_code != 200:
            sys.exit(f"/v1/video failed: {response.status_code} {response.text[:300]}")
        body = response.json()
        images_s = frames_as_images(url, jpegs, args.clients)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"{'way':<44} {'frames':>6} {'wall s':>7} {'frames/s':>8}")
    print(f"{'POST /v1/video (decode, label, link)':<44} {body['frames']:>6} {video_s:>7.2f} "
          f"{body['frames'] / video_s:>8.1f}   tracks: {body['tracks']}")
    print(f"{'  of which the decode alone, one process':<44} {len(frames):>6} {decode_s:>7.2f}")
    print(f"{f'JPEG frames to /v1/detect, {args.clients} clients':<44} {len(jpegs):>6} "
          f"{images_s:>7.2f} {len(jpegs) / images_s:>8.1f}   (client decode and JPEG "
          f"encode not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
