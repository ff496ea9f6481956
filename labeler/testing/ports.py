"""Free TCP ports on 127.0.0.1 for the servers tests and benchmarks start (Serve, S3)."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int, max_port: int = 65535) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on now, each at most
    max_port. The sockets stay bound until all are chosen: closed one by one, the kernel
    may hand the same port out twice. Another process may still take one before the
    caller binds it (a server's first start retries with fresh ports for that)."""
    ports: list[int] = []
    with ExitStack() as held:
        while len(ports) < count:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port <= max_port:
                ports.append(port)
    return ports


def free_port(max_port: int = 65535) -> int:
    """One free TCP port on 127.0.0.1 (see free_ports)."""
    return free_ports(1, max_port)[0]
