"""Starting the application: tokens, bind address, Ray, Serve; used by `labeler serve`."""

from __future__ import annotations

import time

from labeler.serve.auth import bind_host, configured_tokens
from labeler.serve.config import ServeSpec

APP_NAME = "labeler"


def start(spec: ServeSpec) -> tuple[str, list[str]]:
    """Deploy the application on the running Ray (started locally if none) and wait until
    every model is loaded. Returns (base URL, notices for the operator)."""
    import ray
    from ray import serve

    from labeler.serve.app import build_app

    tokens = configured_tokens(spec.api_tokens)
    host, notice = bind_host(spec.host, tokens)
    if not ray.is_initialized():
        ray.init(configure_logging=False)
    serve.start(http_options={"host": host, "port": spec.port})
    serve.run(build_app(spec, tokens), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{spec.port}", [notice] if notice else []


def serve_forever(spec: ServeSpec) -> int:
    """`labeler serve`: start, say where, then keep the process (and so Serve) alive."""
    from ray import serve

    url, notices = start(spec)
    for notice in notices:
        print(f"warning: {notice}")
    names = ", ".join(f"{m.served_name} ({m.task})" for m in spec.models)
    print(f"serving {names} on {url} (API docs: {url}/docs)", flush=True)
    try:
        while True:
            time.sleep(3600)  # Serve runs in Ray's actors; this process only holds them up
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
