"""Sweeps at full power: resume after a killed driver, an MLflow server over HTTP, seed repeats,
checkpoint evaluation on actors with ASHA. Real Ray, real Optuna, real MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ports import StartFailed, free_port, start_on_free_ports

from otu.cli import main
from otu.report.pareto import pareto_front
from otu.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps/quickstart.yaml"
SMALL = ["task.model.epochs=3", "task.data.forget_size=30", "method.perturb_steps=2"]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def small(tmp_path: Path, *extra: str) -> list[str]:
    cache = f"tracking.cache_dir={tmp_path / 'cache'}"
    return sets([f"experiment.{s}" for s in [*SMALL, cache]] + list(extra))


def children(uri: str) -> dict[str, object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("otu")
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags["otu.trial_id"]: r for r in runs if "otu.trial_id" in r.data.tags}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # CI runs the same kill-and-resume, with more kill points: test_faults.py
def test_killed_driver_resumes_with_exactly_one_row_per_trial(tmp_path, ray_local):
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "sweep",
        str(QUICKSTART),
        "--out",
        str(out),
        "--tracking-uri",
        uri,
        *small(tmp_path, "search.num_samples=4", "search.max_concurrent=1"),
    ]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "otu.cli", *args],
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )

    def one_row() -> bool:
        path = out / "trials.parquet"
        return path.is_file() and len(pd.read_parquet(path)) >= 1

    try:
        wait_for(one_row, 300, "the first finished trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = pd.read_parquet(out / "trials.parquet")
    assert len(before) < 4

    assert main(["sweep", "--resume", str(out), "--tracking-uri", uri]) == 0
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 4 and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all()
    assert set(before["trial_id"]) <= set(table["trial_id"])
    runs = children(uri)
    assert sorted(runs) == sorted(table["trial_id"])


def test_children_show_per_step_metrics_while_their_trials_run(tmp_path, ray_local):
    """The driver follows each running trial's steps.jsonl into its child run (it alone writes the
    store): a reader sees a RUNNING child that already has per-step losses, and each finished child
    holds every step its trial wrote."""
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    seen: list[tuple[str, int]] = []  # (status, loss_ce points) of each child, polled during the sweep
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                for run in children(uri).values():
                    points = MlflowClient(uri).get_metric_history(run.info.run_id, "loss_ce")
                    seen.append((run.info.status, len(points)))
            except (AttributeError, MlflowException):  # no store or experiment yet
                pass
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = main(
            [
                "sweep",
                str(QUICKSTART),
                "--out",
                str(out),
                "--tracking-uri",
                uri,
                *small(tmp_path, "search.num_samples=1", "experiment.method.epochs=3", "experiment.eval.plots=false"),
            ]
        )
    finally:
        done.set()
        watcher.join()
    assert code == 0
    assert any(status == "RUNNING" and points > 0 for status, points in seen), seen[-5:]
    runs = children(uri)
    assert sorted(runs) == sorted(pd.read_parquet(out / "trials.parquet")["trial_id"])
    for trial_id, run in runs.items():
        steps = [json.loads(x) for x in (out / "trials" / trial_id / "steps.jsonl").read_text().splitlines()]
        history = MlflowClient(uri).get_metric_history(run.info.run_id, "loss_ce")
        assert len(steps) > 1 and sorted(m.step for m in history) == [r["step"] for r in steps]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["loss_ce"] for r in steps])
        assert run.info.status == "FINISHED"


def test_multiobjective_sweep_front_matches_parquet(tmp_path, ray_local):
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "sweep",
            str(QUICKSTART),
            "--out",
            str(out),
            "--tracking-uri",
            uri,
            *small(tmp_path, "search.num_samples=6", "search.algorithm=nsga2"),
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 6
    sweep = load_sweep(QUICKSTART)
    front = pareto_front(table, [o.metric for o in sweep.objectives], [o.mode for o in sweep.objectives])
    summary = (out / "summary.md").read_text()
    section = summary.split("## Pareto front")[1].split("##")[0]
    listed = {
        line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and "trial_id" not in line
    }
    assert listed == set(front["trial_id"])


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1, answering HTTP (the CLI probes it with a 5 s limit)."""

    def start() -> tuple[subprocess.Popen, str]:
        port = free_port()
        log = tmp_path / f"mlflow-server-{port}.log"
        with log.open("w") as out:
            server = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "mlflow"),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination",
                    str(tmp_path / "server-artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline and server.poll() is None:
            if _answers(url):
                return server, url
            time.sleep(1)
        _stop(server)
        raise StartFailed(log.read_text())

    server, url = start_on_free_ports(start, "mlflow server")
    try:
        yield url
    finally:
        _stop(server)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_seed_repeats_log_to_a_real_mlflow_server(tmp_path, ray_local, mlflow_server):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            str(QUICKSTART),
            "--out",
            str(out),
            "--tracking-uri",
            mlflow_server,
            *small(tmp_path, "search.num_samples=2", "search.seeds=2"),
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 2 and {"test_acc", "test_acc_std"} <= set(table.columns)
    for trial_id in table["trial_id"]:
        per_seed = [json.loads((out / "trials" / trial_id / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
        mean = sum(m["unlearned"]["test_acc"] for m in per_seed) / 2
        assert table.set_index("trial_id").loc[trial_id, "test_acc"] == pytest.approx(mean)
    runs = children(mlflow_server)
    assert sorted(runs) == sorted(table["trial_id"])
    client = MlflowClient(mlflow_server)
    artifacts = {a.path for a in client.list_artifacts(next(iter(runs.values())).info.run_id)}
    assert {"seed-0", "seed-1"} <= artifacts
    assert "± " in (out / "summary.md").read_text() or "test_acc_std" in (out / "summary.md").read_text()


def test_checkpoint_dynamics_on_actors_with_asha(tmp_path, ray_local):
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "sweep",
            str(QUICKSTART),
            "--out",
            str(out),
            "--tracking-uri",
            uri,
            *small(
                tmp_path,
                "search.num_samples=2",
                "search.max_concurrent=1",
                "search.scheduler=asha",
                "objectives=[{metric: nomus, mode: max}]",
                "experiment.dynamics.every=2",
                "experiment.dynamics.select=nomus",
            ),
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 2 and table["nomus"].notna().all()
    completed = [t for t in table["trial_id"] if (out / "trials" / t / "metrics.json").is_file()]
    assert completed, "ASHA keeps the best trial running to the end"
    for trial_id in completed:  # a trial ASHA stopped early keeps its last checkpoint's row only
        trial_dir = out / "trials" / trial_id
        rows = [json.loads(x) for x in (trial_dir / "dynamics.jsonl").read_text().splitlines()]
        assert len(rows) >= 2 and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
        metrics = json.loads((trial_dir / "metrics.json").read_text())
        assert metrics["unlearned"]["nomus"] == pytest.approx(max(r["nomus"] for r in rows))
        assert "last" in metrics
        run = children(uri)[trial_id]
        assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "eval/nomus")) >= 2


def test_a_failing_trial_is_retried_recorded_and_the_sweep_goes_on(tmp_path, ray_local):
    """lr = 1e12 makes DLFD diverge on every attempt: the trial is retried max_failures times, then
    recorded as ERROR with the reason; the other trial finishes and both are in MLflow."""
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "sweep",
            str(QUICKSTART),
            "--out",
            str(out),
            "--tracking-uri",
            uri,
            *small(
                tmp_path,
                "search.algorithm=grid",
                "search.num_samples=1",
                "search.max_failures=1",
                "space={method.lr: {grid: [0.0005, 1.0e12]}}",
                "experiment.eval.plots=false",
            ),
        ]
    )
    assert code == 0
    table = pd.read_parquet(out / "trials.parquet").set_index("config/method.lr")
    assert sorted(table.index) == [0.0005, 1e12]
    good, bad = table.loc[0.0005], table.loc[1e12]
    assert good["status"] == "TERMINATED" and 0 < good["test_acc"] <= 1 and good["failures"] == 0
    assert bad["status"] == "ERROR" and bad["failures"] == 2  # the first attempt and one retry
    assert "diverged" in bad["error"] and "method.lr" in bad["error"]
    assert pd.isna(bad["test_acc"])
    summary = (out / "summary.md").read_text()
    assert "## Failed trials" in summary and bad["trial_id"] in summary
    runs = children(uri)
    assert runs[bad["trial_id"]].info.status == "FAILED"
    assert "diverged" in runs[bad["trial_id"]].data.tags["otu.error"]
    assert runs[good["trial_id"]].info.status == "FINISHED"


def test_step_tail_reads_complete_new_lines_and_restarts_on_a_rewritten_file(tmp_path):
    from otu.runtime.recorder import StepTail

    steps = tmp_path / "steps.jsonl"
    steps.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')  # the trial is mid-write
    tail = StepTail(tmp_path)
    assert tail.new_rows() == [{"step": 0, "loss": 1.0}]
    with steps.open("a") as fh:
        fh.write('ss": 0.5}\n')
    assert tail.new_rows() == [{"step": 1, "loss": 0.5}] and tail.new_rows() == []
    steps.write_text('{"step": 0, "loss": 2.0}\n')  # a retried trial starts its file again
    (tmp_path / "seed-1").mkdir()
    (tmp_path / "seed-1" / "steps.jsonl").write_text('{"step": 0, "loss": 3.0}\n')
    assert tail.new_rows() == [{"step": 0, "loss": 3.0}, {"step": 0, "loss": 2.0}]
