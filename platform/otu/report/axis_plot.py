"""``axis.png``: a one-knob sweep's objectives against the knob — MUSE's scalability plot (a
criterion against the forget-set size) is one such sweep. Per value: the unlearned model (mean over
the trials and seeds that ran it), and that value's own original and retrained oracle (a forget set of
another size has another oracle), read from the trials' ``metrics.json``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from otu.figures import plt, save_figure
from otu.report.pareto import finished

REFERENCES = {"original": ("k--", "original"), "retrained": ("gx", "retrained oracle")}


def plot_axis(sweep_dir: Path, table: pd.DataFrame, knob: str, metrics: Sequence[str], path: Path) -> Path | None:
    """One panel per objective against ``knob`` (a ``config/…`` column); None without finished trials."""
    done = finished(table, metrics)
    if done.empty:
        return None
    values = _ordered(list(dict.fromkeys(done[knob])))
    x = np.arange(len(values)) if any(isinstance(v, str) for v in values) else np.asarray(values, dtype=float)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        trials = [done[done[knob] == v] for v in values]
        ax.plot(x, [rows[metric].mean() for rows in trials], "o-", label="unlearned")
        for model, (style, label) in REFERENCES.items():
            ys = [_reference(sweep_dir, rows["trial_id"], model, metric) for rows in trials]
            if not all(np.isnan(ys)):
                ax.plot(x, ys, style, label=label)
        ax.set_title(metric)
        ax.set_xlabel(knob.removeprefix("config/"))
        if any(isinstance(v, str) for v in values):
            ax.set_xticks(x, [str(v) for v in values], rotation=30)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def _ordered(values: list) -> list:
    """Numbers ascending; names in natural order (``forget_2`` before ``forget_10``)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=lambda v: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(v))])


def _reference(sweep_dir: Path, trial_ids: pd.Series, model: str, metric: str) -> float:
    """Mean of ``model``'s ``metric`` over these trials' runs (every seed's)."""
    found = []
    for trial_id in trial_ids:
        trial = sweep_dir / "trials" / str(trial_id)
        for path in [trial / "metrics.json", *sorted(trial.glob("seed-*/metrics.json"))]:
            if path.is_file():
                value = json.loads(path.read_text()).get(model, {}).get(metric)
                if value is not None:
                    found.append(float(value))
    return float(np.mean(found)) if found else float("nan")
