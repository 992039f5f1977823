"""What ``otu submit`` sends: the entrypoint, the runtime environment and the job metadata.

The job runs exactly the command a user would run at the root of the working directory —
``python -m otu.cli sweep SPEC --set ... --tracking-uri ...`` (or ``run``) — after the spec was
validated here with the same code, so a bad spec never reaches the cluster.

Two install modes:

* ``install=True`` (default, real clusters): ``py_modules`` ships the local ``otu`` package and
  ``pip`` installs its declared dependencies into the job's environment (a no-op for those the
  cluster image already has; pip then needs no network);
* ``install=False`` (``--no-install``): the cluster's Python already has ``otu`` (an image built
  from ``clusters/Dockerfile``, or a local head started from this virtual environment); nothing is
  installed and the job starts in seconds.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

import otu
from otu.errors import SpecError
from otu.spec import Sweep, is_sweep, load_deferring, load_yaml
from otu.tracking.storage import check_uri, is_uri

DEFAULT_EXCLUDES = (
    ".git",
    ".venv",
    "**/__pycache__",
    "*.pyc",
    "otu-runs",
    "mlruns",
    "mlartifacts",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
)
"""Never uploaded with the working directory (Ray also honours ``.gitignore`` and ``.rayignore``)."""
JOB_ENV = {"PYTHONUNBUFFERED": "1"}


@dataclass
class Submission:
    kind: Literal["sweep", "run"]
    name: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)
    """Spec paths outside the working directory: their file checks run in the job, before any work."""

    def to_yaml(self) -> str:
        """The submission as a reviewable document (``otu submit --dry-run``)."""
        doc = {"entrypoint": self.entrypoint, "runtime_env": self.runtime_env, "metadata": self.metadata}
        return yaml.safe_dump(doc, sort_keys=False, width=100)


def build_submission(
    spec: Path,
    overrides: Sequence[str] = (),
    *,
    working_dir: Path = Path("."),
    tracking_uri: str | None = None,
    out: str | None = None,
    install: bool = True,
    pip: Sequence[str] = (),
    env: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> Submission:
    """Validate ``spec`` (with ``overrides``) as the job will see it, and describe the job.

    The job's results must outlive it: ``out`` is a shared absolute path or a storage URI, and the
    MLflow URI (``tracking_uri``, or the spec's ``tracking.uri``) a server or a shared SQLite file.
    Files the spec names outside the working directory exist only on the cluster: the schema is
    checked here and their file checks are deferred to the job (``Submission.deferred``)."""
    work = working_dir.resolve()
    if not work.is_dir():
        raise SpecError(f"--working-dir: {working_dir} is not a directory")
    spec_path = spec.resolve()
    raw = load_yaml(spec_path)  # "spec file not found: ..." before anything else
    rel_spec = _inside(spec_path, work, "spec")
    kind: Literal["sweep", "run"] = "sweep" if is_sweep(raw) else "run"
    with _cwd(work):  # relative data paths resolve as they will in the job
        if kind == "sweep":
            ref = raw.get("experiment")
            if isinstance(ref, str):
                _inside((spec_path.parent / ref).resolve(), work, "experiment")
        parsed, deferred = load_deferring(spec_path, overrides, work)
        exp = parsed.experiment if isinstance(parsed, Sweep) else parsed
        name = parsed.name
    uri = check_tracking_uri(tracking_uri or parse_env(env).get("MLFLOW_TRACKING_URI") or exp.tracking.uri)
    if uri is None:
        raise SpecError(
            "--tracking-uri: the job would keep its MLflow runs in a SQLite file inside its temporary "
            "working directory, deleted when the job ends; give --tracking-uri http://MLFLOW:5000 or "
            "sqlite:////shared/path/mlflow.db (or set tracking.uri in the spec)"
        )
    out = check_out(out)

    args = ["python", "-m", "otu.cli", kind, rel_spec]
    for item in overrides:
        args += ["--set", item]
    if uri:
        args += ["--tracking-uri", uri]
    if out:
        args += ["--out", out]

    env_vars = {**JOB_ENV, **({"MLFLOW_TRACKING_URI": uri} if uri else {}), **parse_env(env)}
    runtime_env: dict[str, Any] = {
        "working_dir": str(work),
        "excludes": [*DEFAULT_EXCLUDES, *excludes],
        "env_vars": env_vars,
    }
    packages = [*(otu_requirements() if install else []), *pip]
    if install:
        runtime_env["py_modules"] = [str(Path(otu.__file__).resolve().parent)]
    if packages:
        runtime_env["pip"] = {"packages": packages, "pip_check": False}
    metadata = {
        "otu.kind": kind,
        "otu.name": name,
        "otu.spec": rel_spec,
        "otu.spec_hash": parsed.hash,
        "otu.version": otu.__version__,
        "otu.results": out,
        "otu.tracking": uri,
    }
    return Submission(kind, name, shlex.join(args), runtime_env, metadata, deferred)


def check_out(out: str | None) -> str:
    """The job's output location: a storage URI, or an absolute path (on a disk the nodes share)."""
    if out and (is_uri(out) or os.path.isabs(out)):
        if is_uri(out):
            check_uri(out)
        return out
    got = f" ({out!r} is relative)" if out else ""
    raise SpecError(
        f"--out: the job runs in a temporary working directory that is deleted when it ends, so its "
        f"trials.parquet and summary would be lost{got}; give --out as an absolute path on storage "
        "the cluster's nodes share, or a URI such as s3://bucket/otu/NAME or gs://bucket/otu/NAME"
    )


def check_tracking_uri(uri: str | None) -> str | None:
    """A URI the job can reach: an http(s) MLflow server, or an absolute path on a shared disk."""
    if not uri:
        return None
    local = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if uri.startswith("file:"):
        local = uri.removeprefix("file://").removeprefix("file:")
    if local is not None and not os.path.isabs(local):
        raise SpecError(
            f"--tracking-uri: {uri!r} is a relative path; the job runs in a temporary directory on "
            "the cluster, so give an MLflow server (http://HOST:5000) or an absolute path on a disk "
            "the head shares (sqlite:////abs/path/mlflow.db)"
        )
    return uri


JOB_EXTRAS = ("llm", "cluster")
"""The extras a job installs: a cluster runs any family (``otu[all]`` without the dev tools)."""


def otu_requirements() -> list[str]:
    """``otu``'s runtime dependencies with :data:`JOB_EXTRAS`, as pip requirement strings."""
    try:
        requires = importlib.metadata.requires("otu") or []
    except importlib.metadata.PackageNotFoundError:
        raise SpecError(
            "otu is not installed as a package here (pip install -e .), so its "
            "dependencies are unknown; use --no-install on a cluster that has otu"
        ) from None
    out = []
    for req in requires:
        spec, _, marker = req.partition(";")
        extra = marker.split("==")[-1].strip().strip("'\"") if "extra ==" in marker else None
        if (extra is None or extra in JOB_EXTRAS) and not spec.strip().startswith("otu"):
            out.append(spec.strip())
    return out


def parse_env(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise SpecError(f"--env: expected NAME=VALUE (got {item!r})")
        out[key] = value
    return out


def _inside(path: Path, root: Path, what: str) -> str:
    """``path`` relative to ``root`` (posix), or a SpecError: the cluster only sees ``root``."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise SpecError(
            f"{what}: {path} is outside the working directory {root}, which is all the "
            "cluster receives (move it inside, or pass --working-dir)"
        ) from None


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def describe(metadata: Mapping[str, str]) -> str:
    """``sweep quickstart`` from a job's metadata (empty for jobs not submitted by otu)."""
    if "otu.kind" not in metadata:
        return ""
    return f"{metadata['otu.kind']} {metadata.get('otu.name', '')}".strip()
