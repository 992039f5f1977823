"""Ports for the servers the tests start (``ray start --head``, ``mlflow server``), which take a port
number on their command line.

A number from binding port 0 and closing it may be taken by another process before the server binds
it (CI saw ``EADDRINUSE``), so every such start goes through :func:`start_on_free_ports`: ``start``
draws its numbers from :func:`free_port` and raises :class:`StartFailed` when the server does not come
up; it is then cleaned up by ``start`` and tried again on fresh numbers.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StartFailed(Exception):
    """The server did not come up (its port may have been taken meanwhile); the message is its output."""


def free_port() -> int:
    """A port nothing listens on right now (for a server to bind, or for an address that must not answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_on_free_ports(start: Callable[[], T], what: str, attempts: int = 4) -> T:
    """``start()``, retried on fresh ports while it raises :class:`StartFailed`."""
    output = ""
    for _ in range(attempts):
        try:
            return start()
        except StartFailed as failed:
            output = str(failed)
    raise AssertionError(f"{what} did not start in {attempts} attempts; last output: {output[-2000:]}")


def ray_head_command(port: int, *options: str) -> list[str]:
    """``ray start --head`` on 127.0.0.1 with its GCS at ``port`` and ``options``, no usage stats."""
    ray = str(Path(sys.executable).parent / "ray")
    return [
        ray,
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        *options,
        "--disable-usage-stats",
    ]
