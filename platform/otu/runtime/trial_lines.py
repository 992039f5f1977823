"""``otu sweep``'s running commentary: one line per finished (or failed) trial with the sweep's
progress (done/total, running, failed, ETA), the trial's time, knobs and objectives — plain lines,
so a piped or logged sweep reads the same as on a terminal (Tune's own tables are off). On a
terminal one progress bar over the trials (done / running / failed, ETA) stays below the lines."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class TrialLines(Callback):
    """Picklable (Tune stores callbacks for ``--resume``): the console is made where it prints."""

    def __init__(self, objectives: Sequence[str], total: int):
        self.objectives, self.total = list(objectives), total
        self.finished = self.failed = 0
        self.started: dict[str, float] = {}
        self.first: float | None = None
        self._bar: Progress | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bar"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bar = None

    def setup(self, **info) -> None:
        console = Console(stderr=True)
        if console.is_terminal:  # piped or logged: the lines alone
            self._bar = Progress(
                TextColumn("trials"), BarColumn(bar_width=24), TextColumn("{task.description}"),
                TimeElapsedColumn(), console=console, transient=True,
            )  # fmt: skip
            self._bar.add_task(self.status(time.time()), total=self.total)
            self._bar.start()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        now = time.time()
        self.first = now if self.first is None else self.first
        self.started.setdefault(trial.trial_id, now)
        self._update(now)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._print(self.line(trial.trial_id, trial.config, trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._print(self.line(trial.trial_id, trial.config, {}, error=str(trial.get_error() or "error")))

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _update(self, now: float) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.task_ids[0], completed=self.finished, description=self.status(now))

    def line(
        self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any], error: str | None = None
    ) -> str:
        now = time.time()
        self.finished += 1
        self.failed += error is not None
        took = now - self.started.pop(trial_id, now)
        knobs = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in config.items())
        if error is not None:
            lines = [line for line in error.strip().splitlines() if line.strip()]
            outcome = f"[red]failed[/]: {escape(lines[-1] if lines else error)}"
        else:
            outcome = " ".join(f"{m}={_short(result.get(m))}" for m in self.objectives)
        return f"trial {trial_id} ({self.status(now)}, {took:.0f} s) {escape(knobs)} → {outcome}"

    def status(self, now: float) -> str:
        """``3/8 · 2 running · 1 failed · ETA 0:00:12``: the sweep so far, the ETA at its pace so far."""
        parts = [f"{self.finished}/{self.total}"]
        if self.started:
            parts.append(f"{len(self.started)} running")
        if self.failed:
            parts.append(f"{self.failed} failed")
        left = self.total - self.finished
        if left > 0 and self.first is not None and self.finished:
            parts.append(f"ETA {timedelta(seconds=round((now - self.first) / self.finished * left))}")
        return " · ".join(parts)

    def _print(self, text: str) -> None:
        console = self._bar.console if self._bar is not None else Console(stderr=True)
        console.print(text, highlight=False, soft_wrap=True)  # above the bar, on a terminal
        self._update(time.time())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
