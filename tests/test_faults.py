"""Faults: concurrent first use of a fresh MLflow store, killed runs never left RUNNING, a sweep
whose driver is SIGKILLed at several points resumes exactly once (no trial repeated or lost, never
restoring Tune's pickles), and an LLM unlearning run survives SIGKILLed Ray Train workers and a
SIGKILLed ``otu run`` (``--resume``) as the same run. Real processes, real Ray, real MLflow."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient
from test_sweep import wait_for

from otu.cli import main
from otu.tracking.mlflow_store import Tracker, store_lock

REPO = Path(__file__).resolve().parents[1]
TABULAR = REPO / "sweeps/experiments/barycenter_tabular.yaml"
FAST = [
    "eval.classifiers=[logistic]",
    "method.variant=gaussian",
    f"task.data.path={REPO / 'platform/otu/tabular/data/diabetes.csv'}",
]


def otu(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_ADDRESS": "local"}
    return subprocess.Popen(
        [sys.executable, "-m", "otu.cli", *args],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def runs(uri: str) -> list:
    with store_lock(uri):  # the store may be being created by a run right now
        client = MlflowClient(uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(ids) if ids else []


@pytest.mark.slow
def test_four_concurrent_runs_on_a_fresh_store_all_finish(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    procs = [
        otu(
            "run",
            str(TABULAR),
            "--out",
            str(tmp_path / f"run{i}"),
            "--tracking-uri",
            uri,
            *sets([*FAST, f"tracking.cache_dir={tmp_path / 'cache'}", f"method.t={i / 4}"]),
        )
        for i in range(4)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(logs)[-4000:]
    found = runs(uri)
    assert len(found) == 4 and {r.info.status for r in found} == {"FINISHED"}


@pytest.mark.slow
def test_killed_runs_end_killed_never_running(tmp_path):
    """SIGTERM: the run is closed as KILLED at exit; SIGKILL: the next open of the store marks it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def start(i: int) -> subprocess.Popen:
        # a sweep spec's experiment trained for a long time: it is RUNNING until killed
        return otu(
            "run",
            str(REPO / "sweeps/experiments/dlfd_digits.yaml"),
            "--out",
            str(tmp_path / f"o{i}"),
            "--tracking-uri",
            uri,
            *sets([f"tracking.cache_dir={tmp_path / 'cache'}", "task.model.epochs=1000"]),
        )

    for i, sig in enumerate((signal.SIGTERM, signal.SIGKILL)):
        proc = start(i)
        try:
            wait_for(
                lambda: (tmp_path / "mlflow.db").exists() and any(r.info.status == "RUNNING" for r in runs(uri)),
                120,
                "a RUNNING run",
            )
        finally:
            os.killpg(proc.pid, sig)
            proc.communicate(timeout=60)
        if sig == signal.SIGKILL:
            assert any(r.info.status == "RUNNING" for r in runs(uri))
            Tracker(uri, "otu")  # the next start on this host
        statuses = [r.info.status for r in runs(uri)]
        assert statuses == ["KILLED"] * (i + 1), statuses


# ---------------------------------------------------------------- kill and resume


def sweep_args(tmp_path: Path, out: Path, uri: str, algorithm: str) -> list[str]:
    space = ["search.num_samples=4"] if algorithm != "grid" else ["search.num_samples=1"]
    spec = tmp_path / f"{algorithm}.yaml"
    grid = (
        "  method.t: {grid: [0.0, 0.25, 0.5, 0.75]}\n"
        if algorithm == "grid"
        else "  method.t: {uniform: [0.0, 1.0]}\n  method.cov_reg: {loguniform: [1.0e-6, 1.0e-2]}\n"
    )
    spec.write_text(
        f"name: kill-{algorithm}\nexperiment: {TABULAR}\nspace:\n{grid}"
        "objectives:\n  - {metric: utility_auc, mode: max}\n  - {metric: leakage_auc, mode: min}\n"
        f"search: {{algorithm: {algorithm}, max_concurrent: 1}}\n"
    )
    return [
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--tracking-uri",
        uri,
        *sets([f"experiment.{s}" for s in [*FAST, f"tracking.cache_dir={tmp_path / 'cache'}"]] + space),
    ]


def rows(out: Path) -> int:
    path = out / "trials.parquet"
    return len(pd.read_parquet(path)) if path.is_file() else 0


KILL_POINTS = {
    "before-the-first-trial-ends": lambda out: (out / "trials").is_dir() and rows(out) == 0,
    "mid-way": lambda out: rows(out) >= 2,
    "after-the-last": lambda out: rows(out) >= 4,
}


class Marker:
    """A pickle that, when loaded, creates a file: planted as Tune's state, it must stay unloaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "point"),
    [
        ("optuna", "before-the-first-trial-ends"),
        ("optuna", "mid-way"),
        ("random", "after-the-last"),
        ("grid", "mid-way"),
    ],
)
def test_a_killed_sweep_resumes_exactly_once(tmp_path, ray_local, algorithm, point):
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = otu(*sweep_args(tmp_path, out, uri, algorithm))
    try:
        wait_for(lambda: KILL_POINTS[point](out) or driver.poll() is not None, 600, point)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        log = driver.communicate(timeout=60)[0]
    assert driver.returncode in (-signal.SIGKILL, 0), log[-3000:]  # 0: it finished between two polls
    before = pd.read_parquet(out / "trials.parquet") if rows(out) else pd.DataFrame(columns=["trial_id"])
    planted = out / "ray" / "tune" / "tuner.pkl"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(pickle.dumps(Marker(tmp_path / "unpickled")))

    assert main(["sweep", "--resume", str(out), "--tracking-uri", uri]) == 0
    assert not (tmp_path / "unpickled").exists()
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 4 and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all()
    assert set(before["trial_id"]) <= set(table["trial_id"])
    configs = table.filter(like="config/").round(12).astype(str).agg("|".join, axis=1)
    assert configs.is_unique, table.filter(like="config/")
    if algorithm == "grid":
        assert sorted(table["config/method.t"]) == [0.0, 0.25, 0.5, 0.75]
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(table["trial_id"])
    assert "4 trials (4 terminated)" in (out / "summary.md").read_text()
    children = [r for r in runs(uri) if "otu.trial_id" in r.data.tags]
    assert sorted(r.data.tags["otu.trial_id"] for r in children) == sorted(table["trial_id"])
    assert {r.info.status for r in children} == {"FINISHED"}
    parents = [r for r in runs(uri) if r.data.tags.get("otu.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


# ---------------------------------------------------------------- the resume plan (no Ray)


def grid_sweep(tmp_path: Path, algorithm: str = "grid", num_samples: int = 2):
    from otu.spec import parse_sweep

    space = (
        {"method.t": {"grid": [0.0, 0.5]}, "method.variant": {"choice": ["gaussian", "empirical"]}}
        if algorithm == "grid"
        else {"method.t": {"uniform": [0.0, 1.0]}}
    )
    return parse_sweep(
        {
            "name": "plan",
            "experiment": str(TABULAR),
            "space": space,
            "objectives": [{"metric": "utility_auc", "mode": "max"}, {"metric": "leakage_auc", "mode": "min"}],
            "search": {"algorithm": algorithm, "num_samples": num_samples},
            "overrides": {"task.data.path": str(REPO / "platform/otu/tabular/data/diabetes.csv")},
        },
        REPO,
    )


def write_trials(folder: Path, rows: list[dict]) -> None:
    from otu.tracking.results import TrialsTable

    for row in rows:
        TrialsTable(folder / "trials.parquet").upsert(row)
        (folder / "trials" / row["trial_id"]).mkdir(parents=True, exist_ok=True)


def test_the_resume_plan_counts_finished_rows_and_drops_the_rest(tmp_path):
    from otu.runtime.resume import plan

    sweep = grid_sweep(tmp_path)  # 2 grid points × 2 repeats
    assert plan(sweep, tmp_path, resume=False).num_samples == 2  # Tune repeats its own grid twice
    write_trials(
        tmp_path,
        [
            {
                "trial_id": "a",
                "status": "TERMINATED",
                "config/method.t": 0.0,
                "config/method.variant": "gaussian",
                "utility_auc": 0.8,
                "leakage_auc": 0.6,
            },
            {
                "trial_id": "b",
                "status": "TERMINATED",
                "config/method.t": 0.0,
                "config/method.variant": "empirical",
                "utility_auc": 0.7,
                "leakage_auc": 0.5,
            },
            {"trial_id": "c", "status": "ERROR", "config/method.t": 0.5, "config/method.variant": "gaussian"},
        ],
    )
    (tmp_path / "trials" / "killed-mid-trial").mkdir()
    work = plan(sweep, tmp_path, resume=True)
    assert work.grid_points == [{"method.t": 0.5}, {"method.t": 0.5}] and work.num_samples == 2
    assert sorted(pd.read_parquet(tmp_path / "trials.parquet")["trial_id"]) == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["a", "b"]


def test_a_killed_trials_loop_checkpoints_go_to_the_resumed_trial_of_its_experiment(tmp_path):
    """The killed driver's running trial has no row: its folder goes, its loop checkpoints are kept
    by experiment hash and claimed by the resumed sweep's trial of the same experiment (a grid
    point run again), whose loop then continues after them; unclaimed ones go at the end."""
    from otu.runtime.experiment import resume_dir
    from otu.runtime.resume import POOL, claim_loop_checkpoints, plan, remove_unrecorded

    sweep = grid_sweep(tmp_path)
    exp = sweep.experiment.with_overrides({"method.t": 0.5, "method.variant": "gaussian"}, check_files=False)
    other = exp.with_overrides({"seed": 7}, check_files=False)
    killed = tmp_path / "trials" / "killed-mid-trial"
    for e in (exp, other):
        saved = resume_dir(killed, e) / "step-00000003"
        saved.mkdir(parents=True)
        (saved / "rank-0.pt").write_bytes(b"state")
    write_trials(tmp_path, [{"trial_id": "a", "status": "TERMINATED", "config/method.t": 0.0}])
    plan(sweep, tmp_path, resume=True)
    assert not killed.exists()
    assert sorted(p.name for p in (tmp_path / POOL).iterdir()) == sorted([exp.hash[:16], other.hash[:16]])

    new_trial = tmp_path / "trials" / "resumed"
    claim_loop_checkpoints(tmp_path, new_trial, exp)
    assert (resume_dir(new_trial, exp) / "step-00000003" / "rank-0.pt").read_bytes() == b"state"
    claim_loop_checkpoints(tmp_path, tmp_path / "trials" / "twin", exp)  # claimed already: nothing
    assert not (tmp_path / "trials" / "twin").exists()
    write_trials(tmp_path, [{"trial_id": "resumed", "status": "TERMINATED", "config/method.t": 0.5}])
    remove_unrecorded(tmp_path)
    assert not (tmp_path / POOL).exists() and resume_dir(new_trial, exp).is_dir()


def test_the_resume_plan_warm_starts_optuna_with_finished_results(tmp_path):
    from otu.runtime.resume import plan
    from otu.runtime.sweep import search_algorithm

    sweep = grid_sweep(tmp_path, "optuna", num_samples=5)
    write_trials(
        tmp_path,
        [
            {"trial_id": "a", "status": "TERMINATED", "config/method.t": 0.25, "utility_auc": 0.8, "leakage_auc": 0.6},
            {"trial_id": "b", "status": "TERMINATED", "config/method.t": 0.75, "utility_auc": 0.7, "leakage_auc": 0.5},
        ],
    )
    work = plan(sweep, tmp_path, resume=True)
    assert work.num_samples == 3
    assert work.warm == [({"method.t": 0.25}, [0.8, 0.6]), ({"method.t": 0.75}, [0.7, 0.5])]
    study = search_algorithm(sweep, work)._ot_study
    assert [(t.params, t.values) for t in study.trials] == [
        ({"method.t": 0.25}, [0.8, 0.6]),
        ({"method.t": 0.75}, [0.7, 0.5]),
    ]


# ---------------------------------------------------------------- the unlearning loop survives kills

OPTOUT = REPO / "sweeps/experiments/optout_tiny.yaml"
LOOP_STEPS, LOOP_EVERY = 16, 4


def loop_args(tmp_path: Path, out: Path) -> list[str]:
    """``otu run`` of the shipped 2-worker ZeRO-3 OPT-OUT spec, shortened (16 steps; the tiny models
    fine-tuned for 20 epochs, not 60: these tests compare runs with each other), with loop
    checkpoints every 4 steps."""
    overrides = [
        f"tracking.cache_dir={tmp_path.parent / 'loop-cache'}",
        "task.model.epochs=20",
        f"method.steps={LOOP_STEPS}",
        f"compute.checkpoint_every={LOOP_EVERY}",
    ]
    return [
        "run",
        str(OPTOUT),
        "--out",
        str(out),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--quiet",
    ] + sets(overrides)


def written_steps(out: Path) -> list[int]:
    path = out / "steps.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def train_workers(pid: int) -> list[psutil.Process]:
    """The Ray Train worker processes under the ``otu run`` process ``pid``."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The final metrics of the run no one kills."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    proc = otu(*loop_args(tmp_path, tmp_path / "run"))
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-3000:]
    assert written_steps(tmp_path / "run") == list(range(LOOP_STEPS))
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.slow
def test_killed_ray_train_workers_cost_a_restart_not_the_run(tmp_path, uninterrupted):
    """SIGKILL of a Ray Train worker by PID at two different steps: Ray Train restarts the worker
    group (``compute.max_failures``), the loop resumes from its latest loop checkpoint, the run ends
    with exit 0, every step once in steps.jsonl and the uninterrupted run's final metrics."""
    out = tmp_path / "run"
    proc = otu(*loop_args(tmp_path, out))
    killed = []
    try:
        for at in (6, 13):  # checkpoints after steps 3, 7, 11: each kill loses a few steps
            wait_for(
                lambda at=at: max(written_steps(out), default=-1) >= at or proc.poll() is not None, 600, f"step {at}"
            )
            workers = train_workers(proc.pid)
            assert workers, "no Ray Train worker found"
            workers[len(killed) % len(workers)].kill()
            killed.append(workers[0].pid)
        log = proc.communicate(timeout=900)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    assert written_steps(out) == list(range(LOOP_STEPS))
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("original", "retrained", "unlearned"):
        assert metrics[model] == pytest.approx(uninterrupted[model], rel=1e-6, abs=1e-9, nan_ok=True), model
    assert not (out / "resume").exists()  # loop checkpoints go once the run is done


@pytest.mark.slow
def test_a_killed_otu_run_resumes_from_its_latest_loop_checkpoint(tmp_path, ray_local, uninterrupted):
    """SIGKILL of ``otu run`` (its whole process group) after step 9: ``otu run --resume DIR``
    continues the loop after step 7 (its latest checkpoint) in the same MLflow run, and ends as the
    uninterrupted run; a second ``--resume`` redoes nothing."""
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = otu(*loop_args(tmp_path, out))
    try:
        wait_for(lambda: max(written_steps(out), default=-1) >= 9 or proc.poll() is not None, 600, "step 9")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "resume").is_dir() and not (out / "metrics.json").exists()

    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert written_steps(out) == list(range(LOOP_STEPS))
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("original", "retrained", "unlearned"):
        assert metrics[model] == pytest.approx(uninterrupted[model], rel=1e-6, abs=1e-9, nan_ok=True), model
    (run,) = runs(uri)
    assert run.info.status == "FINISHED"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "forget_loss")
    logged = Counter(m.step for m in history)
    assert all(logged[s] == 1 for s in range(2 * LOOP_EVERY))  # steps 0–7 were not run again
    assert set(logged) == set(range(LOOP_STEPS))
    before = (out / "metrics.json").stat().st_mtime_ns
    assert main(["run", "--resume", str(out)]) == 0
    assert (out / "metrics.json").stat().st_mtime_ns == before
