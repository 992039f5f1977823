"""MLflow access for otu: tracking-URI resolution and the run layout (one run per ``otu run``; a
parent run per sweep with one child run per trial). Only one process writes a SQLite store: the
CLI process for ``otu run``, the Tune driver for sweeps.

Opening a store is safe from several processes at once: creating/migrating a SQLite file and
creating the experiment happen under a file lock beside it. Each run is tagged with the host and
pid that own it; opening a store marks RUNNING runs whose process is gone (killed) as KILLED."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import otu
from otu.cache import pid_alive
from otu.errors import OtuError, first_line
from otu.paths import sqlite_uri

DEFAULT_TRACKING_URI = "sqlite:///otu-runs/mlflow.db"
MAX_PARAM_LEN = 6000
PROBE_TIMEOUT_S = 5
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""Bounded waits on an MLflow server (MLflow's defaults retry for minutes); the user's values win."""
HOST_TAG, PID_TAG = "otu.host", "otu.pid"
for _noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class TrackingError(OtuError):
    """The tracking URI names no usable store (unknown scheme, unwritable path, unreachable server)."""


def resolve_tracking_uri(cli_value: str | None = None, spec_value: str | None = None) -> str:
    """CLI flag, then ``MLFLOW_TRACKING_URI``, then the spec's ``tracking.uri``, then the default;
    checked before any work: a SQLite file's folder must be writable, a server must answer."""
    uri = cli_value or os.environ.get("MLFLOW_TRACKING_URI") or spec_value or DEFAULT_TRACKING_URI
    uri = sqlite_uri(uri, Path.cwd())  # absolute, so every process writes the same file
    if uri.startswith("sqlite:///"):  # checked, nothing created: a run that fails later leaves no folder
        folder = Path(uri.removeprefix("sqlite:///")).parent
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise TrackingError(f"tracking URI {uri}: cannot create {folder}: {existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise TrackingError(f"tracking URI {uri}: {existing} is not writable")
    elif uri.startswith(("http://", "https://")):
        for name, value in HTTP_ENV.items():
            os.environ.setdefault(name, value)
        _probe(uri)
    return uri


def _probe(uri: str) -> None:
    """Fail in seconds, naming the address, when no MLflow server answers at ``uri``."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # a server answered (an auth proxy may refuse /health); MLflow reports the rest
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"tracking URI {uri}: no MLflow server answered in {PROBE_TIMEOUT_S} s ({reason}); check the "
            "address, that `mlflow server` runs there, and the SSH tunnel / port-forward to it"
        ) from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite store (no-op for servers, which serialise themselves)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)  # the store's folder, made on first use
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """A thin writer over :class:`MlflowClient` that never touches the global active-run state."""

    def __init__(self, tracking_uri: str, experiment: str):
        self.uri = tracking_uri
        try:
            with store_lock(tracking_uri):
                self.client = MlflowClient(tracking_uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is not None:
                    self.experiment_id = found.experiment_id
                else:
                    self.experiment_id = self.client.create_experiment(
                        experiment, artifact_location=_artifact_location(tracking_uri, experiment)
                    )
                self.mark_killed_runs()
        except MlflowException as err:
            raise TrackingError(f"tracking URI {tracking_uri}: {first_line(err.message)}") from None

    def mark_killed_runs(self) -> list[str]:
        """End as KILLED the RUNNING runs this host started whose process is gone; return their ids."""
        query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
        killed = []
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000):
            pid = run.data.tags.get(PID_TAG, "")
            if pid.isdigit() and not pid_alive(int(pid)):
                self.client.set_terminated(run.info.run_id, status="KILLED")
                killed.append(run.info.run_id)
        return killed

    def claim(self, run_id: str) -> None:
        """Make this process the owner of a RUNNING run (a resumed sweep's parent run)."""
        self.set_tags(run_id, owner_tags())
        self.client.update_run(run_id, status="RUNNING")

    def start_run(self, name: str, tags: Mapping[str, str] | None = None, parent: str | None = None) -> str:
        all_tags = {**default_tags(), **owner_tags(), **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def find_run(self, tag: str, value: str, parent: str | None = None) -> str | None:
        query = f"tags.`{tag}` = '{value}'"
        if parent:
            query += f" and tags.`mlflow.parentRunId` = '{parent}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for chunk in _chunks(items, 100):
            self.client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        items = [
            Metric(metric_name(k), float(v), 0, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def log_steps(self, run_id: str, steps: Iterable[Mapping[str, float]], prefix: str = "") -> None:
        items = [
            Metric(metric_name(f"{prefix}{k}"), float(v), 0, int(row["step"]))
            for row in steps
            for k, v in row.items()
            if k != "step" and math.isfinite(float(v))
        ]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(run_id, metrics=chunk)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, paths: Iterable[Path], subdir: str | None = None) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=subdir)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path=subdir)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def metric_name(key: str) -> str:
    """otu's metric name as MLflow allows it: ``@`` (an attack's metric, ``forget_rouge@relearn``)
    becomes ``_at_``."""
    return key.replace("@", "_at_")


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def owner_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def default_tags() -> dict[str, str]:
    tags = {"otu.version": otu.__version__}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


@functools.cache
def _git_commit() -> str | None:
    """The commit otu runs from (asked once per process)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Keep artifacts beside a local SQLite store (``otu-runs/mlartifacts/<experiment>``)."""
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
        return (root / "mlartifacts" / experiment).as_uri()
    return None


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
