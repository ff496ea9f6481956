"""Whether the Ray this process is connected to was started by it: `ray.init()` with no cluster
to join starts a head node in the calling process, a Ray of this machine alone. Joining one
(an address, RAY_ADDRESS, or the cluster `ray start` left on this machine, which `ray.init()`
joins too) gives a node that is not the head. Ray may be absent (the GPU benchmark machine)."""

from __future__ import annotations


def ray_started_here() -> bool:
    """True when Ray is initialized and this process started its head node."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return False
    node = getattr(ray_worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))
