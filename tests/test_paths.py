"""Running outside the test harness: relative paths from any directory, storage URIs, a stale Ray
head, an unreachable --address, and what `otu submit` refuses or defers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ports import StartFailed, free_port, ray_head_command, start_on_free_ports

from otu.cli import main
from otu.cluster.submit import build_submission
from otu.errors import SpecError
from otu.llm.spec import LLMModel
from otu.paths import absolute, resolve_paths, sqlite_uri
from otu.spec import load_experiment

REPO = Path(__file__).resolve().parents[1]
OTU = [sys.executable, "-m", "otu.cli"]
TABULAR = REPO / "sweeps" / "experiments" / "barycenter_tabular.yaml"
FAST_DLFD = ["task.model.epochs=2", "task.data.forget_size=30", "method.perturb_steps=1", "method.epochs=1"]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_spec_paths_become_absolute_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    exp = load_experiment(TABULAR)
    assert exp.task.data.path == str(REPO / "platform/otu/tabular/data/diabetes.csv")
    assert exp.tracking.cache_dir == str(REPO / "otu-runs" / "cache")
    # hub ids stay hub ids; things that look like paths become paths
    model = LLMModel(path="meta-llama/Llama-3.1-8B-Instruct", epochs=0, retain_path="./oracle")
    resolved = resolve_paths(model, tmp_path)
    assert resolved.path == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolved.retain_path == str(tmp_path / "oracle")
    assert absolute("~/x", tmp_path) == os.path.expanduser("~/x")
    assert sqlite_uri("sqlite:///runs/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert sqlite_uri("sqlite:////abs/mlflow.db", tmp_path) == "sqlite:////abs/mlflow.db"
    assert sqlite_uri("http://host:5000", tmp_path) == "http://host:5000"


def test_relative_paths_from_another_directory_with_a_sweep(tmp_path):
    """A user's own directory: data file, spec, cache, --out and MLflow store all relative to it;
    the Tune trials (other processes) find every one of them."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copy(REPO / "platform/otu/tabular/data/diabetes.csv", work / "data" / "table.csv")
    exp = yaml.safe_load(TABULAR.read_text())
    exp["task"]["data"]["path"] = "data/table.csv"
    exp["tracking"] = {"cache_dir": "cache"}
    (work / "exp.yaml").write_text(yaml.safe_dump(exp))
    (work / "sweep.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "rel",
                "experiment": "exp.yaml",
                "space": {"method.t": {"grid": [0.5, 1.0]}},
                "objectives": [{"metric": exp_metric(), "mode": "max"}],
                "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 2},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [*OTU, "sweep", "sweep.yaml", "--out", "out", "--tracking-uri", "sqlite:///ml.db"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(work / "out" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    assert (work / "cache").is_dir() and (work / "ml.db").is_file()
    client = MlflowClient(f"sqlite:///{work / 'ml.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == 2


def exp_metric() -> str:
    from otu.registry import family_spec

    return family_spec("tabular").metrics_for("barycenter")[0]


def test_out_as_a_storage_uri_is_written_when_the_run_ends(tmp_path, capsys):
    target = tmp_path / "bucket" / "run"
    code = main(
        [
            "run",
            str(REPO / "sweeps/experiments/dlfd_digits.yaml"),
            "--out",
            f"file://{target}",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            *sets([*FAST_DLFD, f"tracking.cache_dir={tmp_path / 'cache'}"]),
        ]
    )
    assert code == 0, capsys.readouterr().err[-2000:]
    assert (target / "metrics.json").is_file() and (target / "spec.yaml").is_file()
    assert main(["run", str(REPO / "sweeps/experiments/dlfd_digits.yaml"), "--out", "nosuch://x/y"]) == 2
    assert "--out: cannot use 'nosuch://x/y' as storage" in capsys.readouterr().err


def _kill_session_of(pid: int) -> None:
    session = os.getsid(pid)
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getsid(p.pid) == session:
                p.send_signal(signal.SIGKILL)


@contextlib.contextmanager
def _stale_default_head():
    """`ray start --head` in Ray's default temp dir (so /tmp/ray/ray_current_cluster names it), then
    killed by PID: what a crashed head leaves behind. The file's previous content is restored."""
    current = Path("/tmp/ray/ray_current_cluster")
    before = current.read_text() if current.is_file() else None
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)

    def start() -> tuple[int, int]:
        port = free_port()
        proc = subprocess.run(
            ray_head_command(port, "--num-cpus", "1", "--include-dashboard", "false"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
        head = [
            p
            for p in psutil.process_iter(["cmdline"])
            if f"--gcs_server_port={port}" in " ".join(p.info["cmdline"] or [])
        ]
        if proc.returncode != 0 or not head:
            for p in head:
                with contextlib.suppress(psutil.NoSuchProcess):
                    _kill_session_of(p.pid)
            raise StartFailed(proc.stdout + proc.stderr)
        return port, head[0].pid

    port, head_pid = start_on_free_ports(start, "ray start --head")
    try:
        _kill_session_of(head_pid)
        time.sleep(1)
        assert str(port) in current.read_text()  # the stale pointer is there
        yield
    finally:
        if before is None:
            current.unlink(missing_ok=True)
        else:
            current.write_text(before)


def test_a_stale_ray_head_does_not_capture_run_or_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("RAY_ADDRESS", None)
    keys = [*FAST_DLFD, f"tracking.cache_dir={tmp_path / 'cache'}"]
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    with _stale_default_head():
        run = subprocess.run(
            [
                *OTU,
                "run",
                str(REPO / "sweeps/experiments/dlfd_digits.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--set",
                "dynamics.every=1",
                "--set",
                "dynamics.pool_size=1",
                *tracking,
                *sets(keys),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert (tmp_path / "run" / "dynamics.jsonl").is_file()  # the evaluation actors ran on local Ray
        sweep = subprocess.run(
            [
                *OTU,
                "sweep",
                str(REPO / "sweeps/quickstart.yaml"),
                "--out",
                str(tmp_path / "sweep"),
                "--set",
                "search.num_samples=1",
                *tracking,
                *sets([f"experiment.{k}" for k in keys]),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sweep.returncode == 0, sweep.stderr[-2000:]
        assert (tmp_path / "sweep" / "trials.parquet").is_file()


def test_an_unreachable_address_fails_in_seconds_naming_it(tmp_path):
    port = free_port()  # nothing listens here
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    sweep = subprocess.run(
        [
            *OTU,
            "sweep",
            str(REPO / "sweeps/quickstart.yaml"),
            "--out",
            str(tmp_path / "s"),
            "--address",
            f"127.0.0.1:{port}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    error = [line for line in sweep.stderr.splitlines() if line.startswith("otu: error:")]
    assert sweep.returncode == 2 and len(error) == 1, sweep.stderr[-2000:]
    assert f"--address: cannot reach a Ray cluster at 127.0.0.1:{port}" in error[0]
    run = subprocess.run(
        [
            *OTU,
            "run",
            str(REPO / "sweeps/experiments/dlfd_digits.yaml"),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "dynamics.every=1",
        ],
        env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "RAY_ADDRESS: cannot reach a Ray cluster" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in sweep.stderr + run.stderr
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def test_submit_refuses_results_that_die_with_the_job_and_defers_cluster_files():
    quick = REPO / "sweeps" / "quickstart.yaml"
    with pytest.raises(SpecError, match="--tracking-uri: the job would keep its MLflow runs"):
        build_submission(quick, working_dir=REPO, out="/shared/q")
    with pytest.raises(SpecError, match="--out: the job runs in a temporary working directory"):
        build_submission(quick, working_dir=REPO, tracking_uri="http://mlflow:5000")
    with pytest.raises(SpecError, match="'otu-runs/q' is relative"):
        build_submission(quick, working_dir=REPO, tracking_uri="http://mlflow:5000", out="otu-runs/q")
    sub = build_submission(quick, working_dir=REPO, tracking_uri="http://mlflow:5000", out="s3://b/q")
    assert sub.metadata["otu.results"] == "s3://b/q" and sub.metadata["otu.tracking"] == "http://mlflow:5000"
    assert not sub.deferred

    # the 8B checkpoint lives on the cluster: the schema is checked here, its files in the job
    llama = build_submission(
        REPO / "sweeps" / "optout_llama.yaml", working_dir=REPO, tracking_uri="http://mlflow:5000", out="/shared/llama"
    )
    assert llama.deferred["experiment.task.model.path"] == "/models/Llama-3.1-8B-Instruct"
    # data/elude/… is not in this checkout: as far as this machine knows, a hub dataset id
    assert llama.deferred["experiment.task.data.records"] == "data/elude/forget_qa"
    with pytest.raises(SpecError, match="method.beta"):  # schema errors still fail here
        build_submission(
            REPO / "sweeps" / "optout_llama.yaml",
            ["experiment.method.beta=-1"],
            working_dir=REPO,
            tracking_uri="http://mlflow:5000",
            out="/shared/llama",
        )


@pytest.mark.parametrize(
    "bad_cell, message",
    [("inf", "numeric cells must be finite"), ("dup", "duplicate")],
)
def test_validate_checks_files_outside_the_working_directory_that_exist_here(tmp_path, bad_cell, message):
    """A local file outside the current directory is read and checked by ``otu validate`` (only files
    that are not on this machine, like a cluster's ``/models/…``, are deferred)."""
    outside, work = tmp_path / "data", tmp_path / "work"
    outside.mkdir(), work.mkdir()
    lines = (REPO / "platform/otu/tabular/data/diabetes.csv").read_text().splitlines()
    if bad_cell == "inf":
        lines[1] = ",".join(["inf", *lines[1].split(",")[1:]])
    else:  # a duplicated column name
        lines[0] = ",".join([lines[0].split(",")[1], *lines[0].split(",")[1:]])
    (outside / "table.csv").write_text("\n".join(lines) + "\n")
    spec = REPO / "sweeps/experiments/barycenter_tabular.yaml"
    for path in (outside / "table.csv", "../data/table.csv"):  # absolute and relative
        check = subprocess.run(
            [*OTU, "validate", str(spec), "--set", f"task.data.path={path}"],
            cwd=work,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "platform")},
        )
        assert check.returncode != 0 and "task.data" in check.stderr and message in check.stderr.lower(), check
    absent = subprocess.run(
        [*OTU, "validate", str(spec), "--set", "task.data.path=/cluster/only/table.csv"],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "platform")},
    )
    assert absent.returncode == 0 and "not checked here" in absent.stdout + absent.stderr


def test_a_home_relative_data_path_is_checked_where_it_points(tmp_path):
    """``~/…`` is expanded before the file checks: a file that exists there is read and checked; one that
    does not lies outside the working directory and is deferred, named expanded."""
    (tmp_path / "table.csv").write_text((REPO / "platform/otu/tabular/data/diabetes.csv").read_text())
    spec = REPO / "sweeps/experiments/barycenter_tabular.yaml"
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO / "platform")}
    ok = subprocess.run(
        [*OTU, "validate", str(spec), "--set", "task.data.path=~/table.csv"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0 and "not checked here" not in ok.stdout + ok.stderr, ok.stderr
    sweep = subprocess.run(
        [
            *OTU,
            "validate",
            str(REPO / "sweeps/barycenter_tabular.yaml"),
            "--set",
            "experiment.task.data.path=~/table.csv",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert sweep.returncode == 0 and "not checked here" not in sweep.stdout + sweep.stderr, sweep.stderr
    missing = subprocess.run(
        [*OTU, "validate", str(spec), "--set", "task.data.path=~/absent.csv"], env=env, capture_output=True, text=True
    )
    out = " ".join((missing.stdout + missing.stderr).split())
    assert missing.returncode == 0 and "not checked here" in out and "absent.csv" in out, out


@pytest.mark.parametrize(
    "override, field",
    [("tracking.cache_dir=afile/cache", "tracking.cache_dir"), ("tracking.uri=sqlite:///afile/m.db", "tracking URI")],
)
def test_an_unusable_cache_or_store_fails_before_any_folder_is_made(tmp_path, override, field):
    (tmp_path / "afile").write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run(
        [*OTU, "run", str(REPO / "sweeps/experiments/dlfd_digits.yaml"), "--set", override],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and field in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no otu-runs/ left behind
