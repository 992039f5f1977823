"""What ``otu run`` shows while it works: rich progress for the run's phases and the unlearning
loop's steps (step/total, loss, rate, ETA)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class StepsColumn(ProgressColumn):
    """``12/45 · loss=0.31 · 3.1 it/s · ETA 0:00:10`` for the loop's bar; nothing for a phase."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("stepping"):
            return Text("")
        parts = [f"{int(task.completed)}/{int(task.total)}" if task.total else f"step {int(task.completed)}"]
        if task.fields.get("shown"):
            parts.append(task.fields["shown"])
        if task.speed:
            parts.append(f"{task.speed:.3g} it/s")
        if task.total and task.speed and not task.finished:
            parts.append(f"ETA {timedelta(seconds=round((task.total - task.completed) / task.speed))}")
        return Text(" · ".join(parts))


class RunProgress:
    """A context manager: ``phase(name)`` starts a phase (spinner), ``step(metrics, total)`` advances
    the unlearning loop's bar (one call per reported step). ``quiet`` shows nothing."""

    def __init__(self, console: Console, quiet: bool = False):
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),
            TimeElapsedColumn(),
            StepsColumn(),
            console=console,
            disable=quiet,
        )
        self.task: Any = None

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # the error's one line stands alone: no display left behind
            self.progress.live.transient = True
        else:
            self._close()
        self.progress.stop()

    def phase(self, name: str) -> None:
        self._close()
        self.task = self.progress.add_task(name, total=None, shown="", stepping=False)

    def step(self, metrics: Mapping[str, float], total: int | None) -> None:
        """One reported step of the loop (the current phase's task becomes its bar)."""
        if self.task is None:
            self.phase("unlearning")
        self.progress.update(self.task, advance=1, total=total, shown=loss_text(metrics), stepping=True)

    def _close(self) -> None:
        if self.task is None:
            return
        task = self.progress.tasks[self.task]
        end = max(task.completed, 1) if task.total is None else task.total
        self.progress.update(self.task, total=end, completed=end)
        self.task = None


def loss_text(metrics: Mapping[str, float]) -> str:
    """The losses of a step (or, without any, its first two numbers), compactly."""
    keys = [k for k in metrics if "loss" in k] or list(metrics)[:2]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys[:2])
