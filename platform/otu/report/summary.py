"""A sweep's human-readable report: ``summary.md`` (best trials, Pareto front) and ``pareto.png``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from otu.figures import plt, save_figure
from otu.report.pareto import finished, pareto_front
from otu.spec import Sweep
from otu.tracking.results import TRIALS_FILE, TrialsTable


def write_report(sweep_dir: Path, sweep: Sweep, timings: dict[str, float] | None = None) -> list[Path]:
    table = TrialsTable(sweep_dir / TRIALS_FILE).read()
    metrics = [o.metric for o in sweep.objectives]
    modes = [o.mode for o in sweep.objectives]
    front = pareto_front(table, metrics, modes)
    summary = sweep_dir / "summary.md"
    summary.write_text(summary_markdown(sweep, table, front, timings or {}))
    plot = sweep_dir / "pareto.png"
    plot_front(table, front, metrics, modes, knobs(table), plot, title=sweep.name)
    return [summary, plot]


def knobs(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("config/")]


def summary_markdown(sweep: Sweep, table: pd.DataFrame, front: pd.DataFrame, timings: dict[str, float]) -> str:
    metrics = [o.metric for o in sweep.objectives]
    done = finished(table, metrics)
    cols = ["trial_id", *knobs(table), *metrics]
    lines = [f"# Sweep `{sweep.name}`", ""]
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    lines.append(
        f"Method `{sweep.experiment.method.name}` on family `{sweep.experiment.task.family}`; "  # type: ignore[attr-defined]
        f"search `{sweep.search.algorithm}`, {len(table)} trials "
        f"({', '.join(f'{v} {k.lower()}' for k, v in counts.items()) or 'none finished'}), "
        f"{sweep.search.seeds} seed(s) per configuration."
    )
    if timings:
        lines.append("")
        lines.append(
            "Time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items())
        )
    lines += ["", "## Objectives", ""]
    lines += [f"- `{o.metric}` ({o.mode})" for o in sweep.objectives]
    lines += ["", "## Pareto front", ""]
    lines.append(_table(_mean_std(front.sort_values(metrics[0]), metrics), cols) if not front.empty else "_no finished trials_")
    lines += ["", "## Best trial per objective", ""]
    for obj in sweep.objectives:
        if done.empty:
            break
        best = done.loc[done[obj.metric].idxmax() if obj.mode == "max" else done[obj.metric].idxmin()]
        lines.append(f"- `{obj.metric}` {obj.mode}: trial `{best['trial_id']}` = {best[obj.metric]:.4g}")
    failed = table[table["status"] != "TERMINATED"] if not table.empty else table
    if not failed.empty:
        lines += ["", "## Failed trials", ""]
        cols = [c for c in ("trial_id", *knobs(table), "status", "failures", "error") if c in failed.columns]
        lines.append(_table(failed, cols))
    return "\n".join(lines) + "\n"


def plot_front(
    table: pd.DataFrame,
    front: pd.DataFrame,
    metrics: list[str],
    modes: list[str],
    knob_cols: list[str],
    path: Path,
    title: str = "",
) -> None:
    """Scatter of the first two objectives (or objective vs trial for one), front highlighted,
    each point labelled with its knobs."""
    done = finished(table, metrics)
    x_name, y_name = (metrics[0], metrics[1]) if len(metrics) > 1 else ("trial", metrics[0])
    fig, ax = plt.subplots(figsize=(7, 5))

    def xy(df: pd.DataFrame):
        x = df[x_name] if x_name != "trial" else pd.Series(range(len(df)), index=df.index)
        return x, df[y_name]

    if not done.empty:
        ax.scatter(*xy(done), color="0.6", label="trials")
        fx, fy = xy(front)
        order = fx.argsort()
        ax.plot(fx.iloc[order], fy.iloc[order], "o-", color="C3", label="Pareto front")
        for (_, row), x, y in zip(done.iterrows(), *xy(done), strict=True):
            label = ", ".join(f"{c.removeprefix('config/').split('.')[-1]}={_fmt(row[c])}" for c in knob_cols)
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"{x_name} ({modes[0]})" if x_name != "trial" else "trial")
    ax.set_ylabel(f"{y_name} ({modes[-1]})")
    ax.set_title(title)
    ax.legend(loc="best")
    save_figure(fig, path)


def _mean_std(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Objective cells as ``mean ± std`` where seed repeats give a spread."""
    shown = table.copy()
    for m in metrics:
        if f"{m}_std" in table.columns:
            shown[m] = [f"{mean:.4g} ± {std:.2g}" for mean, std in zip(table[m], table[f"{m}_std"], strict=True)]
    return shown


def _table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    rows = ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join([head, sep, *rows])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
