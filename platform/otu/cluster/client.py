"""Reaching a Ray cluster's job server: address and token resolution, a fast probe, the client.

Ray's own ``JobSubmissionClient`` waits on the operating system's TCP timeout for an address that
does not answer and reports auth failures as long multi-line text. :func:`connect` first probes
``GET /api/version`` with a short timeout and turns each failure into one precise line; only then
does it build the client, with the token sent as ``Authorization: Bearer <token>`` — the header
Ray's dashboard checks when the head runs with ``RAY_AUTH_MODE=token`` (Ray ≥ 2.52).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from otu.errors import OtuError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
"""Default for ``--address`` (the variable Ray's own ``ray job`` CLI reads first)."""
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
PROBE_TIMEOUT_S = 5.0


class ClusterError(OtuError):
    """The cluster cannot be reached, refuses the credentials, or a job request failed."""


@dataclass(frozen=True)
class Connection:
    address: str
    """``http(s)://HOST:PORT`` of the head's dashboard (job server)."""
    token: str | None
    token_source: str | None
    """Where the token came from (``--token``, ``$RAY_AUTH_TOKEN``, a file), for error messages."""
    ray_version: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def resolve_address(address: str | None) -> str:
    """``--address``, else ``$RAY_API_SERVER_ADDRESS``; must be an http(s) URL with a host."""
    value = address or os.environ.get(ADDRESS_ENV)
    if not value:
        raise ClusterError(f"--address: required, e.g. http://HEAD:8265 (or set {ADDRESS_ENV})")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ClusterError(
            f"--address: expected the head's dashboard URL http(s)://HOST:PORT, e.g. "
            f"http://127.0.0.1:8265 (got {value!r})"
        )
    return value.rstrip("/")


def resolve_token(token: str | None) -> tuple[str | None, str | None]:
    """The token and its source, in Ray's order: ``--token``, ``$RAY_AUTH_TOKEN``,
    ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; ``(None, None)`` when there is none."""
    if token is not None:
        if not token.strip():
            raise ClusterError("--token: empty token")
        return token.strip(), "--token"
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    path_value = os.environ.get(TOKEN_PATH_ENV)
    if path_value:
        path = Path(path_value).expanduser()
        text = path.read_text().strip() if path.is_file() else ""
        if not text:
            raise ClusterError(f"${TOKEN_PATH_ENV}: {path} is missing or empty (it must hold the token)")
        return text, str(path)
    default = DEFAULT_TOKEN_FILE.expanduser()
    if default.is_file() and default.read_text().strip():
        return default.read_text().strip(), str(default)
    return None, None


def probe(address: str, token: str | None, token_source: str | None, timeout: float | None = None) -> Connection:
    """Check that ``address`` is a Ray job server that accepts ``token``; return the connection."""
    import requests

    timeout = timeout or PROBE_TIMEOUT_S
    conn = Connection(address, token, token_source)
    url = f"{address}/api/version"
    try:
        response = requests.get(url, headers=conn.headers, timeout=timeout)
    except requests.exceptions.ConnectTimeout:
        raise ClusterError(
            f"--address: {address} did not answer within {timeout:g} s "
            "(is the head up and its dashboard port reachable from here?)"
        ) from None
    except requests.exceptions.ConnectionError as err:
        raise ClusterError(
            f"--address: cannot connect to the Ray dashboard at {address} "
            f"({_reason(err)}); is the head running with its dashboard on that port?"
        ) from None
    except requests.exceptions.Timeout:
        raise ClusterError(
            f"--address: {address} accepted the connection but sent no answer within {timeout:g} s"
        ) from None
    if response.status_code == 401:
        raise ClusterError(
            f"--token: the Ray cluster at {address} requires token authentication and no token was "
            f"given (pass --token, or set ${TOKEN_ENV} / ${TOKEN_PATH_ENV}, or write ~/.ray/auth_token)"
        )
    if response.status_code == 403:
        raise ClusterError(
            f"--token: the Ray cluster at {address} rejected the token from "
            f"{token_source} (403 Forbidden: invalid authentication token)"
        )
    try:
        version = response.json()["ray_version"] if response.ok else None
    except (ValueError, KeyError, TypeError):
        version = None
    if version is None:
        raise ClusterError(
            f"--address: {address} answered HTTP {response.status_code} to /api/version "
            "without a Ray version; is this the head's dashboard port (default 8265)?"
        )
    return Connection(address, token, token_source, version)


def connect(address: str | None, token: str | None) -> tuple[JobSubmissionClient, Connection]:
    """Probe the cluster, then build Ray's job client carrying the token header."""
    from ray.job_submission import JobSubmissionClient

    conn = probe(resolve_address(address), *resolve_token(token))
    try:
        client = JobSubmissionClient(conn.address, headers=conn.headers)
    except Exception as err:  # Ray raises RuntimeError/ConnectionError/AuthenticationError
        raise ClusterError(f"--address: {conn.address}: {_first_line(err)}") from None
    return client, conn


def _reason(err: Exception) -> str:
    text = str(err)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "Temporary failure in name resolution",
        "Network is unreachable",
    ):
        if marker in text:
            return marker.lower()
    return _first_line(err)


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__
