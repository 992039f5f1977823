"""A sweep's human-readable report: ``summary.md`` (best trials, Pareto front, reference models),
``pareto.png``, ``axis.png`` (one swept knob) and ``report.html`` (the same in one static page,
figures inlined); a run's ``report.html`` (metrics and its figures)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from otu.report.axis_plot import plot_axis
from otu.report.front_plot import Reference, fmt, plot_front
from otu.report.html import Page
from otu.report.pareto import finished, pareto_front
from otu.robustness import tables
from otu.spec import Sweep
from otu.tracking.results import TRIALS_FILE, TrialsTable

REFERENCE_MODELS = ("original", "retrained")
HTML_FRONT_TRIALS = 6
"""Front trials whose figures the sweep page shows."""


def write_report(sweep_dir: Path, sweep: Sweep, timings: dict[str, float] | None = None) -> list[Path]:
    table = TrialsTable(sweep_dir / TRIALS_FILE).read()
    metrics = [o.metric for o in sweep.objectives]
    modes = [o.mode for o in sweep.objectives]
    front = pareto_front(table, metrics, modes)
    references = reference_metrics(sweep_dir)
    summary = sweep_dir / "summary.md"
    summary.write_text(summary_markdown(sweep, table, front, timings or {}, references))
    plot = plot_front(
        table, front, metrics, modes, knobs(table), sweep_dir / "pareto.png", title=sweep.name, references=references
    )
    axis = (
        plot_axis(sweep_dir, table, knobs(table)[0], metrics, sweep_dir / "axis.png")
        if len(knobs(table)) == 1
        else None
    )
    page = sweep_html(sweep_dir, sweep, table, front, references, plot, axis)
    return [summary, plot, *([axis] if axis else []), page]


def reference_metrics(sweep_dir: Path) -> dict[str, Reference]:
    """Mean and std over seeds of the original model's and the oracle's metrics, read from the
    trials' ``metrics.json`` (every trial of one seed holds the same reference values)."""
    per_model: dict[str, dict[str, dict[str, float]]] = {}
    for path in sorted((sweep_dir / "trials").glob("*/metrics.json")) + sorted(
        (sweep_dir / "trials").glob("*/seed-*/metrics.json")
    ):
        run = json.loads(path.read_text())
        seed = path.parent.name if path.parent.name.startswith("seed-") else "seed"
        for name in REFERENCE_MODELS:
            if name in run:
                per_model.setdefault(name, {})[seed] = run[name]
    out: dict[str, Reference] = {}
    for name, by_seed in per_model.items():
        runs = list(by_seed.values())
        out[name] = {
            m: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
            for m in runs[0]
            for v in [[r[m] for r in runs if m in r]]
        }
    return out


def references_frame(references: Mapping[str, Reference], metrics: list[str]) -> pd.DataFrame:
    rows = []
    for name, ref in references.items():
        cells = {m: fmt(ref[m][0]) + (f" ± {ref[m][1]:.2g}" if ref[m][1] else "") for m in metrics if m in ref}
        rows.append({"model": name, **cells})
    return pd.DataFrame(rows, columns=["model", *metrics])


def knobs(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("config/")]


def summary_markdown(
    sweep: Sweep,
    table: pd.DataFrame,
    front: pd.DataFrame,
    timings: dict[str, float],
    references: Mapping[str, Reference] | None = None,
) -> str:
    metrics = [o.metric for o in sweep.objectives]
    done = finished(table, metrics)
    cols = ["trial_id", *knobs(table), *metrics]
    lines = [f"# Sweep `{sweep.name}`", ""]
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    lines.append(
        f"Method `{sweep.experiment.method.name}` on family `{sweep.experiment.task.family}`; "
        f"search `{sweep.search.algorithm}`, {len(table)} trials "
        f"({', '.join(f'{v} {k.lower()}' for k, v in counts.items()) or 'none finished'}), "
        f"{sweep.search.seeds} seed(s) per configuration."
    )
    if timings:
        lines.append("")
        lines.append("Time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items()))
    lines += ["", "## Objectives", ""]
    lines += [f"- `{o.metric}` ({o.mode})" for o in sweep.objectives]
    lines += ["", "## Pareto front", ""]
    lines.append(
        _table(_mean_std(front.sort_values(metrics[0]), metrics), cols) if not front.empty else "_no finished trials_"
    )
    if references:
        lines += ["", "## Reference models", ""]
        lines.append(_table(references_frame(references, metrics), ["model", *metrics]))
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
    rows = ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join([head, sep, *rows])


def sweep_html(
    sweep_dir: Path,
    sweep: Sweep,
    table: pd.DataFrame,
    front: pd.DataFrame,
    references: Mapping[str, Reference],
    plot: Path,
    axis: Path | None = None,
) -> Path:
    """``report.html``: the summary's tables, the Pareto plot (and a one-knob sweep's ``axis.png``) and
    the first front trials' figures."""
    metrics = [o.metric for o in sweep.objectives]
    cols = ["trial_id", *knobs(table), *metrics]
    page = Page(f"Sweep {sweep.name}")
    page.paragraph(
        f"Method {sweep.experiment.method.name} on family {sweep.experiment.task.family}; "
        f"search {sweep.search.algorithm}, {len(table)} trials, {sweep.search.seeds} seed(s) per configuration. "
        "Objectives: " + ", ".join(f"{o.metric} ({o.mode})" for o in sweep.objectives) + "."
    )
    page.image(plot, "Pareto plot: grey trials, red front (numbered as in the table), reference models")
    if axis is not None:
        page.image(axis, "The objectives against the swept knob, with each value's original and oracle")
    page.heading("Pareto front").table(_shown(_mean_std(front.sort_values(metrics[0]), metrics), cols))
    if references:
        page.heading("Reference models").table(references_frame(references, metrics))
    failed = table[table["status"] != "TERMINATED"] if not table.empty else table
    if not failed.empty:
        fail_cols = ["trial_id", *knobs(table), "status", "failures", "error"]
        page.heading("Failed trials").table(_shown(failed, fail_cols))
    for trial_id in list(front.sort_values(metrics[0])["trial_id"])[:HTML_FRONT_TRIALS]:
        figures = sorted((sweep_dir / "trials" / str(trial_id)).glob("**/plots/*.png"))
        if figures:
            page.heading(f"Trial {trial_id}", level=3)
            for figure in figures:
                page.image(figure, str(figure.relative_to(sweep_dir)))
    return page.write(sweep_dir / "report.html")


def run_html(run_dir: Path) -> Path:
    """``report.html`` of one run: its metrics per model and its figures."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    models, names, attacked = tables(metrics)

    def frame(rows: list[str]) -> pd.DataFrame:
        return pd.DataFrame([{"metric": n, **{model: metrics[model].get(n) for model in models}} for n in rows])

    page = Page(f"Run {run_dir.name}").heading("Metrics").table(frame(names))
    if attacked:  # eval.robustness: forget metrics after each attack, and their recovery
        page.heading("After the attacks").table(frame(attacked))
    requests = metrics.get("requests")
    if isinstance(requests, list) and requests:  # a request chain (task.data.requests): the rows above are the last's
        per_request = [row.get("unlearned", {}) for row in requests]
        rows = [{"metric": n, **{f"request {k}": r.get(n) for k, r in enumerate(per_request, 1)}} for n in names]
        page.heading("The unlearned model after each request").table(pd.DataFrame(rows))
    figures = sorted((run_dir / "plots").glob("*.png"))
    if figures:
        page.heading("Figures")
        for figure in figures:
            page.image(figure, figure.name)
    return page.write(run_dir / "report.html")


def _shown(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[[c for c in cols if c in df.columns]]
