"""The sweep driver's single writer: trials.parquet rows and MLflow runs, as trials run.

A Tune callback runs in the driver process, so one process writes the SQLite store however many
trials run in parallel. Its MLflow writes run in order on one background thread of the driver, so
Tune's event loop never waits for the store: the store opens while the first trials start, a
child run opens as its trial starts, and every ``LIVE_EVERY_S`` seconds the per-step metrics the
running trials have appended to their ``steps.jsonl`` are logged to their child runs (live
curves); a finished trial's remaining steps, checkpoint metrics, final metrics and files close its
run. ``trials.parquet`` is written synchronously as each trial ends. The recorder is picklable
(Tune stores it for ``--resume``) and idempotent: a trial logged before a driver crash is neither
duplicated in the table nor in MLflow.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from otu.runtime.experiment import read_steps
from otu.tracking.mlflow_store import Tracker, flatten
from otu.tracking.results import TRIALS_FILE, TrialsTable

STATE_FILE = "mlflow.json"
LIVE_EVERY_S = 2.0
"""How often the running trials' new steps go to MLflow."""
RESULT_NOISE = {
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "training_iteration",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "pid",
    "hostname",
    "node_ip",
    "date",
    "trial_id",
    "experiment_tag",
    "checkpoint_dir_name",
    "should_checkpoint",
}
_TRANSIENT = ("_tracker", "_parent", "_jobs", "_thread", "_live", "_error")


class StepTail:
    """The rows appended to a trial's ``steps.jsonl`` files (one per seed) since the last call."""

    def __init__(self, trial_dir: Path):
        self.trial_dir = trial_dir
        self.read: dict[Path, bytes] = {}  # file → the complete lines already returned

    def new_rows(self) -> list[dict[str, float]]:
        rows = []
        for path in sorted([*self.trial_dir.glob("steps.jsonl"), *self.trial_dir.glob("seed-*/steps.jsonl")]):
            data = path.read_bytes()
            seen = self.read.get(path, b"")
            start = len(seen) if data.startswith(seen) else 0  # else rewritten (a retried trial)
            end = data.rfind(b"\n") + 1  # complete lines only
            if end > start:
                rows += [json.loads(line) for line in data[start:end].splitlines() if line.strip()]
                self.read[path] = data[:end]
        return rows


class SweepRecorder(Callback):
    def __init__(self, sweep_dir: str, tracking_uri: str, experiment: str):
        self.sweep_dir = sweep_dir
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.__setstate__({})

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tracker: Tracker | None = None
        self._parent: str | None = None
        self._jobs: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._live: dict[str, tuple[str, StepTail]] = {}  # trial id → (child run id, its steps)
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ Tune hooks

    def setup(self, **info) -> None:
        self._submit(self._tracking)  # create/open the store while the trial processes start

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        trial_id, config = trial.trial_id, dict(trial.config)
        self._submit(lambda: self._open_live(trial_id, config))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "TERMINATED", None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._record(trial, "ERROR", _last_line(_error_text(trial)))

    def on_experiment_end(self, trials, **info) -> None:
        self.drain()

    def drain(self) -> None:
        """Wait for every queued MLflow write; raise the first one that failed."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # ------------------------------------------------------------------ writing

    def _submit(self, job: Callable[[], object]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="otu-mlflow-writer", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _write_loop(self) -> None:
        last_poll = time.monotonic()
        while True:
            try:
                job = self._jobs.get(timeout=LIVE_EVERY_S)
            except queue.Empty:
                job = self._poll_live
            if job is None:
                return
            self._run(job)
            if time.monotonic() - last_poll >= LIVE_EVERY_S:
                self._run(self._poll_live)
                last_poll = time.monotonic()

    def _run(self, job: Callable[[], object]) -> None:
        try:
            job()
        except Exception as err:  # re-raised by drain(), at the end of the sweep
            self._error = self._error or err

    def _open_live(self, trial_id: str, config: dict[str, Any]) -> None:
        """A running trial's child run (kept when a retried trial starts again)."""
        if trial_id in self._live:
            return
        tracker, parent = self._tracking()
        run = tracker.find_run("otu.trial_id", trial_id, parent)
        if run is None:
            run = self._start_child(trial_id, config, "RUNNING")
        self._live[trial_id] = (run, StepTail(Path(self.sweep_dir) / "trials" / trial_id))

    def _poll_live(self) -> None:
        for run, tail in list(self._live.values()):
            self._tracking()[0].log_steps(run, tail.new_rows())

    def _record(self, trial, status: str, error: str | None) -> None:
        metrics = {k: v for k, v in (trial.last_result or {}).items() if k not in RESULT_NOISE}
        metrics = {k: v for k, v in flatten(metrics).items() if k != "config" and not k.startswith("config.")}
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "status": status,
            "error": error,
            "failures": trial.num_failures,
        }
        row.update({f"config/{k}": v for k, v in trial.config.items()})
        row.update(metrics if status == "TERMINATED" else {})
        TrialsTable(Path(self.sweep_dir) / TRIALS_FILE).upsert(row)
        trial_id, config, logged = trial.trial_id, dict(trial.config), metrics if status == "TERMINATED" else {}
        self._submit(lambda: self._log_child(trial_id, config, logged, status, error))

    def _log_child(self, trial_id: str, config, metrics, status: str, error: str | None) -> None:
        """Close a finished trial's child run: its steps not logged yet, checkpoint and final
        metrics, files. Without a live run (a backfilled row) the run is made afresh."""
        tracker, parent = self._tracking()
        live = self._live.pop(trial_id, None)
        if live is None:
            existing = tracker.find_run("otu.trial_id", trial_id, parent)
            if existing is not None:
                if tracker.client.get_run(existing).info.status == "FINISHED":
                    return
                tracker.client.delete_run(existing)
            live = (self._start_child(trial_id, config, status), StepTail(Path(self.sweep_dir) / "trials" / trial_id))
        run, tail = live
        tracker.log_steps(run, tail.new_rows())
        trial_dir = tail.trial_dir
        run_dirs = [trial_dir] if (trial_dir / "metrics.json").is_file() else sorted(trial_dir.glob("seed-*"))
        for run_dir in run_dirs:
            tracker.log_steps(run, read_steps(run_dir, "dynamics"), prefix="eval/")
        tracker.log_metrics(run, metrics)
        tracker.set_tags(run, {"otu.status": status, **({"otu.error": error[:5000]} if error else {})})
        for run_dir in run_dirs:
            sub = None if run_dir == trial_dir else run_dir.name
            files = [run_dir / "metrics.json", run_dir / "spec.yaml", run_dir / "plots"]
            tracker.log_artifacts(run, files, subdir=sub)
        tracker.end_run(run, "FINISHED" if status == "TERMINATED" else "FAILED")

    def _start_child(self, trial_id: str, config, status: str) -> str:
        tracker, parent = self._tracking()
        run = tracker.start_run(trial_id, tags={"otu.trial_id": trial_id, "otu.status": status}, parent=parent)
        tracker.log_params(run, config)
        return run

    def backfill(self, finished) -> None:
        """Log the finished rows (``trials.parquet``) that have no finished MLflow run (the driver
        was killed between writing the row and logging the run), and delete the unfinished child
        runs of trials that have no row (the killed driver's running trials, run again anew)."""
        tracker, parent = self._tracking()
        rows = {str(t) for t in finished["trial_id"]}
        query = f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status != 'FINISHED'"
        for run in tracker.client.search_runs([tracker.experiment_id], filter_string=query, max_results=10000):
            if run.data.tags.get("otu.trial_id") not in rows:
                tracker.client.delete_run(run.info.run_id)
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
