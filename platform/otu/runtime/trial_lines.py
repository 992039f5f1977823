"""``otu sweep``'s running commentary: one line per finished (or failed) trial with its knobs and
objectives, printed by the driver beside Tune's own table."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.markup import escape


class TrialLines(Callback):
    """Picklable (Tune stores callbacks for ``--resume``): the console is made where it prints."""

    def __init__(self, objectives: Sequence[str], total: int):
        self.objectives, self.total = list(objectives), total
        self.finished = 0
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._print(self.line(trial.trial_id, trial.config, trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._print(self.line(trial.trial_id, trial.config, {}, error=str(trial.get_error() or "error")))

    def line(
        self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any], error: str | None = None
    ) -> str:
        self.finished += 1
        took = time.time() - self.started.pop(trial_id, time.time())
        knobs = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in config.items())
        if error is not None:
            lines = [line for line in error.strip().splitlines() if line.strip()]
            outcome = f"[red]failed[/]: {escape(lines[-1] if lines else error)}"
        else:
            outcome = " ".join(f"{m}={_short(result.get(m))}" for m in self.objectives)
        return f"trial {trial_id} ({self.finished}/{self.total}, {took:.0f} s) {escape(knobs)} → {outcome}"

    def _print(self, text: str) -> None:
        Console(stderr=True).print(text, highlight=False, soft_wrap=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
