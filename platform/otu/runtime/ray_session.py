"""Start or attach the Ray instance a command runs on.

Without an address, otu starts its own embedded Ray (``address="local"``): it never attaches to
whatever ``/tmp/ray/ray_current_cluster`` names, so a dead head left behind by another program cannot
make a command wait for ever. An address given with ``--address`` or ``RAY_ADDRESS`` (set by Ray
for a submitted job's driver) attaches on purpose, after a TCP probe that fails in seconds.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

from otu.errors import ServiceError

PROBE_TIMEOUT_S = 5.0


def attach_address(flag: str | None) -> str | None:
    """The address to attach to: ``--address``, else ``RAY_ADDRESS``, else None (start locally)."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """``ray.init`` on ``address`` (probed first), or on a new embedded local instance."""
    import ray

    if ray.is_initialized():
        return
    target = attach_address(address)
    if target is None:
        ray.init(address="local", include_dashboard=False, configure_logging=False, **kwargs)
        return
    probe(target, "--address" if address else "RAY_ADDRESS")
    ray.init(address=target, configure_logging=False, **kwargs)


def probe(address: str, source: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`ServiceError` unless a TCP connection to ``address`` opens within ``timeout``."""
    if address in ("auto", "local"):
        return
    host, port = _host_port(address, source)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ServiceError(
            f"{source}: cannot reach a Ray cluster at {address} ({err.strerror or err}); check that "
            "the head is running (`ray start --head`) and the address (host:port of its GCS, or "
            "ray://host:10001)"
        ) from None


def _host_port(address: str, source: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if parts.scheme in ("http", "https"):
        raise ServiceError(
            f"{source}: {address} is a dashboard URL; `otu run/sweep --address` takes the GCS "
            "address (host:6379) or ray://host:10001 (`otu submit --address` takes the dashboard URL)"
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ServiceError(f"{source}: expected host:port or ray://host:port (got {address!r})")
    return parts.hostname, port
