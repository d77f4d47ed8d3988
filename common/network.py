"""Where a process is and how to reach it: a free port, this node's address, the calling actor's placement."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    """This node's address as Ray knows it, or loopback outside Ray."""
    try:
        import ray  # optional here: the helpers also serve processes without Ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - fall back to loopback outside Ray
        pass
    return "127.0.0.1"


def actor_placement() -> dict:
    """Where Ray put the calling actor: node, placement group, assigned resources (colocation checks)."""
    import ray  # optional, as above

    ctx = ray.get_runtime_context()
    return {"node": ctx.get_node_id(), "placement_group": ctx.get_placement_group_id(), "resources": ctx.get_assigned_resources()}
