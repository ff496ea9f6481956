"""Starting the application: tokens, bind address, Ray, Serve; used by `labeler serve`."""

from __future__ import annotations

import errno
import socket
import time

from labeler.config import SpecError
from labeler.ray_node import ray_started_here
from labeler.serve.auth import bind_host, configured_tokens
from labeler.serve.config import ServeSpec
from labeler.storage import check_model_sources

APP_NAME = "labeler"


def start(spec: ServeSpec) -> tuple[str, list[str]]:
    """Deploy the application on the running Ray (started locally if none) and wait until
    every model is loaded. Returns (base URL, notices for the operator)."""
    import ray
    from ray import serve

    from labeler.serve.app import build_app

    tokens = configured_tokens(spec.api_tokens)
    host, notice = bind_host(spec.host, tokens)
    check_model_sources(spec.models, "models")  # else replicas that never start, unnamed
    if not ray.is_initialized():
        ray.init(configure_logging=False)
    # A Ray started here is this machine alone: what it lacks, no node will bring. A
    # cluster joined (on a `ray up` head, ray.init joins the cluster `ray start` left) may
    # have no GPU node yet: its autoscaler adds them as replicas ask.
    if ray_started_here():
        check_local_gpus(spec, ray.cluster_resources().get("GPU", 0))
        # No Serve of a joined cluster listens there: what holds the port is another
        # program, and Serve's proxy would fail to bind it, in tracebacks, after a minute.
        check_port_free(host, spec.port)
    serve.start(http_options={"host": host, "port": spec.port})
    serve.run(build_app(spec, tokens), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{spec.port}", [notice] if notice else []


def check_port_free(host: str, port: int) -> None:
    """SpecError when this process cannot listen on host:port, as Serve's proxy binds it
    (no SO_REUSEADDR): the port is taken, reserved, or the host is not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            why = ("another program listens there (an earlier labeler serve?); pass a free "
                   "--port, or stop it" if err.errno == errno.EADDRINUSE else
                   f"{err.strerror}; pass another --port or --host")
            raise SpecError(f"port: cannot listen on {host}:{port}: {why}") from None


def check_local_gpus(spec: ServeSpec, gpus: float) -> None:
    """SpecError naming the model whose replicas ask for more GPUs than a local Ray has:
    Serve would wait for ever for them to be placed (at their fewest, for autoscaling)."""
    needed = 0.0
    for k, model in enumerate(spec.models):
        per_replica = model.resources.num_gpus
        replicas = (model.serving.autoscaling.min_replicas if model.serving.autoscaling
                    else model.serving.num_replicas)
        needed += per_replica * replicas
        have = f"{gpus:g}" if gpus else "0 (no CUDA device is visible)"
        advice = "lower num_gpus or replicas, or set num_gpus: 0 to serve on the CPU"
        if per_replica > gpus:  # not even one replica, however it scales
            raise SpecError(f"models.{k}.resources.num_gpus: a replica needs {per_replica:g} "
                            f"GPU, but this machine's Ray has {have}; {advice}")
        if needed > gpus:
            raise SpecError(f"models.{k}.resources.num_gpus: {replicas} replica(s) of "
                            f"{per_replica:g} GPU each (with the models before it, {needed:g} "
                            f"GPUs), but this machine's Ray has {have}; {advice}")


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
