"""What a sweep still has to run: ``trials.parquet`` (the driver's own record) is the source of truth.

A resumed sweep never restores Ray Tune's pickled experiment state (``ray/tune/*.pkl`` would run
whatever code a received sweep directory holds, and it lags the table by seconds). It rebuilds the
search from ``sweep.yaml`` and the finished rows instead:

* grid — the grid points (× ``num_samples`` repeats) not yet finished, run once each;
* random — ``num_samples`` − finished new samples;
* optuna / nsga2 — the finished trials are added to a fresh study as completed trials (their
  objective values), then ``num_samples`` − finished new suggestions (the sampler's seed is moved on
  by the number of finished trials, so it does not replay the first run's suggestions).

Rows of trials that did not finish (ERROR) are dropped and re-run; output folders of trials that
never got a row (the driver was killed mid-trial) are removed, but their loop checkpoints
(``<run>/resume/<hash>``, see :mod:`otu.runtime.experiment`) are moved to ``DIR/resume-pool/<hash>``
first: the resumed sweep's trial of the same experiment (a grid point run again) claims them
(:func:`claim_loop_checkpoints`) and its loop continues where the killed one stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from otu.runtime.experiment import RESUME, resume_dir
from otu.spec import Experiment, Sweep
from otu.tracking.results import TRIALS_FILE, TrialsTable

POOL = "resume-pool"
"""Loop checkpoints of a killed sweep's unfinished trials, by experiment hash."""


@dataclass
class Plan:
    """The trials left to run: ``num_samples`` for Tune and, for grid, the exact points."""

    num_samples: int
    """Tune's ``num_samples`` (for grid without ``grid_points``: repeats of the whole grid)."""
    finished: pd.DataFrame
    grid_points: list[dict[str, Any]] | None = None
    """Grid search only: each remaining grid point (grid keys set), run once."""
    warm: list[tuple[dict[str, Any], list[float]]] = field(default_factory=list)
    """Optuna only: (configuration, objective values) of the finished trials."""


def plan(sweep: Sweep, sweep_dir: Path, resume: bool) -> Plan:
    """The trials ``sweep`` still needs in ``sweep_dir`` (all of them unless ``resume``; a fresh grid
    sweep runs ``num_samples`` repeats of Tune's own grid)."""
    if not resume:
        return Plan(sweep.search.num_samples, pd.DataFrame(columns=["trial_id", "status"]))
    table = TrialsTable(sweep_dir / TRIALS_FILE)
    finished = table.keep_finished()
    _remove_orphans(sweep_dir / "trials", set(finished["trial_id"]))
    if sweep.search.algorithm == "grid":
        points = remaining_grid_points(sweep, finished)
        return Plan(len(points), finished, grid_points=points)
    warm = _finished_points(sweep, finished) if sweep.search.algorithm in ("optuna", "nsga2") else []
    return Plan(max(0, sweep.search.num_samples - len(finished)), finished, warm=warm)


def grid_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Every grid point (keys with ``grid`` values), ``num_samples`` times over."""
    keys = [k for k, p in sweep.space.items() if p.kind == "grid"]
    values = [sweep.space[k].grid or [] for k in keys]
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    return points * sweep.search.num_samples


def remaining_grid_points(sweep: Sweep, finished: pd.DataFrame) -> list[dict[str, Any]]:
    """The grid points (as a multiset) not among the finished rows' configurations."""
    done = Counter(
        _point_key({k: row[f"config/{k}"] for k in _grid_keys(sweep)})
        for _, row in finished.iterrows()
        if all(f"config/{k}" in row for k in _grid_keys(sweep))
    )
    left = []
    for point in grid_points(sweep):
        key = _point_key(point)
        if done[key] > 0:
            done[key] -= 1
        else:
            left.append(point)
    return left


def _grid_keys(sweep: Sweep) -> list[str]:
    return [k for k, p in sweep.space.items() if p.kind == "grid"]


def _point_key(point: dict[str, Any]) -> str:
    return json.dumps({k: _plain(v) for k, v in point.items()}, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    """numpy scalars (from Parquet) as Python values; integral floats as ints, so 2 == 2.0."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _finished_points(sweep: Sweep, finished: pd.DataFrame) -> list[tuple[dict[str, Any], list[float]]]:
    """Configurations and objective values of the finished rows that carry all of them."""
    points = []
    for _, row in finished.iterrows():
        config = {k: _plain(row.get(f"config/{k}")) for k in sweep.space}
        values = [row.get(o.metric) for o in sweep.objectives]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            continue
        points.append((config, [float(v) for v in values]))
    return points


def remove_unrecorded(sweep_dir: Path) -> None:
    """After a resumed sweep: remove trial folders with no row in trials.parquet (a trial process of
    the killed driver may have written one after :func:`plan` cleaned up) and the unclaimed loop
    checkpoints."""
    _remove_orphans(sweep_dir / "trials", set(TrialsTable(sweep_dir / TRIALS_FILE).read()["trial_id"]))
    shutil.rmtree(sweep_dir / POOL, ignore_errors=True)


def claim_loop_checkpoints(sweep_dir: Path, run_dir: Path, exp: Experiment) -> None:
    """Move the pooled loop checkpoints of ``exp`` (a killed trial's) to ``run_dir``, if any; the
    first trial of that experiment to ask gets them."""
    pooled, mine = sweep_dir / POOL / resume_dir(run_dir, exp).name, resume_dir(run_dir, exp)
    if not pooled.is_dir() or mine.exists():
        return
    mine.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # another trial of the same experiment claimed them first
        pooled.rename(mine)


def _remove_orphans(trials_dir: Path, keep: set[str]) -> None:
    """Remove output folders of trials that never finished (no row), keeping their loop checkpoints."""
    if not trials_dir.is_dir():
        return
    pool = trials_dir.parent / POOL
    for child in trials_dir.iterdir():
        if child.is_dir() and child.name not in keep:
            for checkpoints in [*child.glob(f"{RESUME}/*"), *child.glob(f"seed-*/{RESUME}/*")]:
                if checkpoints.is_dir() and any(checkpoints.iterdir()) and not (pool / checkpoints.name).exists():
                    pool.mkdir(exist_ok=True)
                    checkpoints.rename(pool / checkpoints.name)
            shutil.rmtree(child, ignore_errors=True)
