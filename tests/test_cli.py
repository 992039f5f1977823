"""The CLI end to end on the vision family: run, sweep (real Ray Tune + MLflow), validate, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from otu.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "task.model.epochs=3",
    "task.data.forget_size=30",
    "method.perturb_steps=2",
]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture()
def tracking(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture()
def cache(tmp_path) -> str:
    return f"tracking.cache_dir={tmp_path / 'cache'}"


def test_validate_ok_and_bad(tmp_path, capsys):
    assert main(["validate", str(REPO / "sweeps/quickstart.yaml")]) == 0
    # a checkpoint that lives on the cluster: schema checked, its file checks left to the run
    assert main(["validate", str(REPO / "sweeps/optout_llama.yaml")]) == 0
    assert "task.model.path=/models/Llama-3.1-8B-Instruct" in capsys.readouterr().err
    assert main(["validate", str(REPO / "sweeps/optout_llama.yaml"), "--set", "experiment.method.beta=-1"]) == 2
    assert "method.beta" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "task": {"family": "vision"}, "method": {"name": "dfld"}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "method.name" in err and "'dfld'" in err and "dlfd" in err


def test_bad_spec_leaves_no_output(tmp_path, tracking):
    out = tmp_path / "run"
    spec = REPO / "sweeps/experiments/dlfd_digits.yaml"
    code = main(["run", str(spec), "--out", str(out), "--tracking-uri", tracking, "--set", "method.alpha=-1"])
    assert code == 2 and not out.exists()
    code = main(
        [
            "sweep",
            str(REPO / "sweeps/quickstart.yaml"),
            "--out",
            str(out),
            "--tracking-uri",
            tracking,
            "--set",
            "objectives.0.metric=acc",
        ]
    )
    assert code == 2 and not out.exists()


def test_run_writes_metrics_spec_and_one_mlflow_run(tmp_path, tracking, cache):
    out = tmp_path / "run"
    spec = REPO / "sweeps/experiments/dlfd_digits.yaml"
    code = main(["run", str(spec), "--out", str(out), "--tracking-uri", tracking, *sets([*SMALL, cache])])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"original", "retrained", "unlearned"}
    for model in metrics.values():
        assert set(model) == {"test_acc", "top2_acc", "mia_acc", "forgetting_score", "nomus"}
        assert 0.0 <= model["test_acc"] <= 1.0
    resolved = yaml.safe_load((out / "spec.yaml").read_text())
    assert resolved["task"]["model"]["epochs"] == 3
    assert (out / "steps.jsonl").read_text().strip()
    runs = MlflowClient(tracking).search_runs([MlflowClient(tracking).get_experiment_by_name("otu").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["test_acc"] == pytest.approx(metrics["unlearned"]["test_acc"])
    assert run.data.metrics["original/test_acc"] == pytest.approx(metrics["original"]["test_acc"])
    assert run.data.params["method.name"] == "dlfd"


def test_two_trial_sweep_writes_parquet_report_and_mlflow(tmp_path, tracking, cache, ray_local, capsys):
    out = tmp_path / "sweep"
    overrides = [f"experiment.{s}" for s in [*SMALL, cache]] + ["search.num_samples=2"]
    code = main(
        ["sweep", str(REPO / "sweeps/quickstart.yaml"), "--out", str(out), "--tracking-uri", tracking, *sets(overrides)]
    )
    assert code == 0
    table = pd.read_parquet(out / "trials.parquet")
    assert len(table) == 2 and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all()
    for col in ("config/method.alpha", "config/method.ot_weight", "test_acc", "forgetting_score"):
        assert col in table.columns and table[col].notna().all()
    summary = (out / "summary.md").read_text()
    assert "Pareto front" in summary and (out / "pareto.png").stat().st_size > 0
    assert "Reference models" in summary and (out / "report.html").is_file()
    err = capsys.readouterr().err
    # piped (80 columns), the start and end lines keep the sweep's folder and the URI whole for grep
    assert len(str(out)) > 40 and re.search(rf"→ {re.escape(str(out))}$", err, re.M)
    assert re.search(rf"done in \d+ s: {re.escape(str(out))} \(.*\), MLflow at {re.escape(tracking)}$", err, re.M)
    for trial_id in table["trial_id"]:  # one line per finished trial, with its objectives
        assert re.search(rf"trial {trial_id} \([12]/2[ ,].*test_acc=[0-9.]+ forgetting_score=[0-9.]+", err)
    for trial_id in table["trial_id"]:
        assert json.loads((out / "trials" / trial_id / "metrics.json").read_text())["unlearned"]

    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("otu").experiment_id])
    parents = [r for r in runs if r.data.tags.get("otu.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    by_trial = {r.data.tags["otu.trial_id"]: r for r in children}
    for _, row in table.iterrows():
        child = by_trial[row["trial_id"]]
        assert child.data.metrics["test_acc"] == pytest.approx(row["test_acc"])
        assert float(child.data.params["method.alpha"]) == pytest.approx(row["config/method.alpha"])
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"metrics.json", "spec.yaml"} <= artifacts
        history = client.get_metric_history(child.info.run_id, "loss_ce")
        assert len(history) >= 1


def test_report_regenerates_summary(tmp_path, tracking, cache):
    out = tmp_path / "run"
    spec = REPO / "sweeps/experiments/dlfd_digits.yaml"
    assert main(["run", str(spec), "--out", str(out), "--tracking-uri", tracking, *sets([*SMALL, cache])]) == 0
    assert main(["report", str(out)]) == 0
    assert 'src="data:image/png;base64,' in (out / "report.html").read_text()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_sigterm_swallowed_by_a_destructor_still_ends_the_command(tmp_path):
    """A SIGTERM landing in a ``__del__`` (or a gc callback) raises a KeyboardInterrupt Python only
    reports ("Exception ignored in"): otu raises it again until a handler catches one, so the
    command ends (a CI run once waited 60 s for a SIGTERMed `otu run` that kept training)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "swallow.py"
    script.write_text(
        "import os, signal, sys, threading, time\n"
        "from otu import cli\n"
        "signal.signal(signal.SIGTERM, cli._terminate)\n"
        "class Slow:\n"
        "    def __del__(self):\n"
        "        time.sleep(1.5)\n"
        "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "try:\n"
        "    Slow()\n"
        "    deadline = time.time() + 30\n"
        "    while time.time() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    sys.exit(1)\n"
        "except KeyboardInterrupt:\n"
        "    cli.INTERRUPTED.set()\n"
        "    sys.exit(130)\n"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in done.stderr  # the first KeyboardInterrupt was swallowed
    assert done.returncode == 130 and time.monotonic() - start < 15
