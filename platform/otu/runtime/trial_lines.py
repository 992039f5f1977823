"""``otu sweep``'s running commentary: one line per finished (or failed) trial with the sweep's
progress (done/total, running, failed, ETA), the trial's time, knobs and objectives — plain lines,
so a piped or logged sweep reads the same as on a terminal (Tune's own tables are off)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.markup import escape


class TrialLines(Callback):
    """Picklable (Tune stores callbacks for ``--resume``): the console is made where it prints."""

    def __init__(self, objectives: Sequence[str], total: int):
        self.objectives, self.total = list(objectives), total
        self.finished = self.failed = 0
        self.started: dict[str, float] = {}
        self.first: float | None = None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        now = time.time()
        self.first = now if self.first is None else self.first
        self.started.setdefault(trial.trial_id, now)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._print(self.line(trial.trial_id, trial.config, trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._print(self.line(trial.trial_id, trial.config, {}, error=str(trial.get_error() or "error")))

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
        if left > 0 and self.first is not None:
            parts.append(f"ETA {timedelta(seconds=round((now - self.first) / self.finished * left))}")
        return " · ".join(parts)

    def _print(self, text: str) -> None:
        Console(stderr=True).print(text, highlight=False, soft_wrap=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
