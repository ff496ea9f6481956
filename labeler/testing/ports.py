"""Free TCP ports on 127.0.0.1 for the servers tests and benchmarks start (Serve, S3)."""

from __future__ import annotations

import socket


def free_port(max_port: int = 65535) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, at most max_port. Another
    process may take it before the caller binds it: good enough for tests on one machine."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port <= max_port:
            return port
