"""The sweep driver's single writer: trials.parquet rows and MLflow runs, as trials finish.

A Tune callback runs in the driver process, so one process writes the SQLite store however many
trials run in parallel. It is picklable (Tune stores it for ``--resume``) and idempotent: a trial
logged before a driver crash is neither duplicated in the table nor in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune import Callback

from otu.runtime.experiment import read_steps
from otu.tracking.mlflow_store import Tracker, flatten
from otu.tracking.results import TRIALS_FILE, TrialsTable

STATE_FILE = "mlflow.json"
RESULT_NOISE = {
    "time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "time_since_restore",
    "iterations_since_restore", "done", "pid", "hostname", "node_ip", "date", "trial_id",
    "experiment_tag", "checkpoint_dir_name", "should_checkpoint",
}


class SweepRecorder(Callback):
    def __init__(self, sweep_dir: str, tracking_uri: str, experiment: str):
        self.sweep_dir = sweep_dir
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._tracker: Tracker | None = None
        self._parent: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_tracker", "_parent")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _tracker=None, _parent=None)

    # ------------------------------------------------------------------ Tune hooks

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "TERMINATED", None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "ERROR", _last_line(_error_text(trial)))

    # ------------------------------------------------------------------ writing

    def _record(self, trial, status: str, error: str | None) -> None:
        metrics = {k: v for k, v in (trial.last_result or {}).items() if k not in RESULT_NOISE}
        metrics = {k: v for k, v in flatten(metrics).items() if k != "config" and not k.startswith("config.")}
        row: dict[str, Any] = {
            "trial_id": trial.trial_id, "status": status, "error": error, "failures": trial.num_failures,
        }
        row.update({f"config/{k}": v for k, v in trial.config.items()})
        row.update(metrics if status == "TERMINATED" else {})
        TrialsTable(Path(self.sweep_dir) / TRIALS_FILE).upsert(row)
        self._log_child(trial.trial_id, trial.config, metrics if status == "TERMINATED" else {}, status, error)

    def _log_child(self, trial_id: str, config, metrics, status: str, error: str | None) -> None:
        tracker, parent = self._tracking()
        existing = tracker.find_run("otu.trial_id", trial_id, parent)
        if existing is not None:
            if tracker.client.get_run(existing).info.status == "FINISHED":
                return
            tracker.client.delete_run(existing)
        run = tracker.start_run(trial_id, tags={"otu.trial_id": trial_id, "otu.status": status}, parent=parent)
        tracker.log_params(run, config)
        trial_dir = Path(self.sweep_dir) / "trials" / trial_id
        run_dirs = [trial_dir] if (trial_dir / "metrics.json").is_file() else sorted(trial_dir.glob("seed-*"))
        for run_dir in run_dirs:
            tracker.log_steps(run, read_steps(run_dir))
            tracker.log_steps(run, read_steps(run_dir, "dynamics"), prefix="eval/")
        tracker.log_metrics(run, metrics)
        if error:
            tracker.set_tags(run, {"otu.error": error[:5000]})
        for run_dir in run_dirs:
            sub = None if run_dir == trial_dir else run_dir.name
            files = [run_dir / "metrics.json", run_dir / "spec.yaml", run_dir / "plots"]
            tracker.log_artifacts(run, files, subdir=sub)
        tracker.end_run(run, "FINISHED" if status == "TERMINATED" else "FAILED")

    def backfill(self, finished) -> None:
        """Log the finished rows (``trials.parquet``) that have no finished MLflow run: the driver
        was killed between writing the row and logging the run."""
        meta = {"trial_id", "status", "error", "failures"}
        for _, row in finished.iterrows():
            config = {k.removeprefix("config/"): v for k, v in row.items() if k.startswith("config/")}
            metrics = {k: v for k, v in row.items() if k not in meta and not k.startswith("config/")}
            self._log_child(str(row["trial_id"]), config, metrics, "TERMINATED", None)

    def finish(self, report_files: list[Path], timings: dict[str, float]) -> None:
        """Log the sweep's report to the parent run and close it."""
        tracker, parent = self._tracking()
        tracker.log_metrics(parent, timings)
        tracker.log_artifacts(parent, [*report_files, Path(self.sweep_dir) / TRIALS_FILE])
        tracker.end_run(parent)

    def _tracking(self) -> tuple[Tracker, str]:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, self.experiment)
            state_path = Path(self.sweep_dir) / STATE_FILE
            state = json.loads(state_path.read_text()) if state_path.is_file() else {}
            parent = state.get("parent_run_id") if state.get("tracking_uri") == self.tracking_uri else None
            if parent is not None:
                self._tracker.claim(parent)  # a resumed sweep: this driver now owns the parent run
            else:
                sweep_yaml = Path(self.sweep_dir) / "sweep.yaml"
                parent = self._tracker.start_run(Path(self.sweep_dir).name, tags={"otu.kind": "sweep"})
                if sweep_yaml.is_file():
                    self._tracker.log_artifacts(parent, [sweep_yaml])
                state_path.write_text(json.dumps({"tracking_uri": self.tracking_uri, "parent_run_id": parent}))
            self._parent = parent
        assert self._parent is not None
        return self._tracker, self._parent


def _error_text(trial) -> str:
    """The trial's last traceback: Tune writes it beside the trial's local files (``error.txt``)."""
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text()
    return str(trial.get_error() or "unknown error")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else text[:2000]
