"""Memory the ingress holds for an uploaded video once its request is parsed: what stays
in the process (resident set size) after labeler.serve.inputs.parse_request and
bytes_or_uri, beyond the request body as it arrived, in multiples of the video's size.

A video upload is held while its frames decode and are labeled (minutes), up to
limits.max_video_requests at once per ingress replica, so each multiple is that many
videos' worth of memory. The body arrives through a real Starlette Request (ASGI receive).

    .venv/bin/python benchmarks/serve_upload_memory.py               # a 64 MiB video
    .venv/bin/python benchmarks/serve_upload_memory.py --mib 256

Printed, for a multipart upload and for base64 in JSON: the multiple held, and how the
video endpoint drops the base64 text once decoded (its model_copy), counted as it does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os

from starlette.requests import Request

from labeler.serve.inputs import VideoRequest, bytes_or_uri, parse_request


def resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def asgi_request(body: bytes, content_type: str) -> Request:
    """A Starlette Request whose body arrives in one ASGI message, as uvicorn delivers it."""
    sent = []

    async def receive():
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/video", "query_string": b"",
             "headers": [(b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode())]}
    return Request(scope, receive)


def request_body(kind: str, video: bytes) -> tuple[bytes, str]:
    if kind == "json":
        return (json.dumps({"video": base64.b64encode(video).decode()}).encode(),
                "application/json")
    head = ('--B\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
            'Content-Type: video/mp4\r\n\r\n').encode()
    return head + video + b"\r\n--B--\r\n", "multipart/form-data; boundary=B"


async def held(kind: str, video: bytes) -> float:
    body, content_type = request_body(kind, video)
    request = asgi_request(body, content_type)
    before = resident_bytes()
    req, upload, _ = await parse_request(request, VideoRequest, 2**40, 30, "video")
    data, _ = bytes_or_uri(req.video, req.uri, upload, "video")
    req = req.model_copy(update={"video": None})  # as Ingress.video does
    gc.collect()
    assert len(data) == len(video)
    return (resident_bytes() - before) / len(video)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="video size in MiB")
    args = parser.parse_args()
    video = os.urandom(args.mib * 1024 * 1024)
    print(f"video: {args.mib} MiB")
    for kind in ("multipart", "json"):
        print(f"{kind:>9}: {asyncio.run(held(kind, video)):.2f}x the video held after parsing")


if __name__ == "__main__":
    main()
