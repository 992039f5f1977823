"""Compare sweeps (e.g. OPT-OUT vs NPO) on one plot and one table: each sweep's trials and front."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from otu.errors import SpecError
from otu.figures import plt, save_figure
from otu.report.pareto import finished, pareto_front
from otu.report.summary import _table
from otu.spec import Sweep, load_yaml, parse_sweep
from otu.tracking.results import TRIALS_FILE, TrialsTable


def compare_sweeps(sweep_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write ``compare.md`` and ``compare.png`` into ``out_dir``. The sweeps must share the first
    sweep's objectives (metric names and modes); fronts are computed per sweep."""
    sweeps = [_load(d) for d in sweep_dirs]
    objectives = [(o.metric, o.mode) for o in sweeps[0].objectives]
    for d, s in zip(sweep_dirs, sweeps, strict=True):
        missing = [m for m, _ in objectives if m not in {o.metric for o in s.objectives}]
        if missing:
            raise SpecError(f"{d}: sweep {s.name!r} lacks objective(s) {missing} of {sweeps[0].name!r}")
    metrics = [m for m, _ in objectives]
    modes = [mode for _, mode in objectives]
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (d, s) in enumerate(zip(sweep_dirs, sweeps, strict=True)):
        table = TrialsTable(d / TRIALS_FILE).read()
        done = finished(table, metrics)
        front = pareto_front(table, metrics, modes)
        label = f"{s.name} ({s.experiment.method.name})"
        x = metrics[0] if len(metrics) > 1 else None
        y = metrics[1] if len(metrics) > 1 else metrics[0]
        xs = done[x] if x else range(len(done))
        ax.scatter(xs, done[y], color=f"C{i}", alpha=0.35)
        fx = front[x] if x else range(len(front))
        order = pd.Series(list(fx)).argsort()
        ax.plot(pd.Series(list(fx)).iloc[order], front[y].iloc[order], "o-", color=f"C{i}", label=label)
        for _, row in front.iterrows():
            rows.append(
                {
                    "sweep": s.name,
                    "method": s.experiment.method.name,
                    "trial_id": row["trial_id"],
                    **{m: row[m] for m in metrics},
                }
            )
    ax.set_xlabel(f"{metrics[0]} ({modes[0]})" if len(metrics) > 1 else "trial")
    ax.set_ylabel(f"{metrics[-1]} ({modes[-1]})")
    ax.legend(loc="best")
    ax.set_title("Pareto fronts")
    plot = out_dir / "compare.png"
    save_figure(fig, plot)

    md = out_dir / "compare.md"
    cols = ["sweep", "method", "trial_id", *metrics]
    md.write_text(
        "# Sweep comparison\n\n"
        + "\n".join(f"- `{d}`: {s.name}" for d, s in zip(sweep_dirs, sweeps, strict=True))
        + "\n\n## Pareto fronts\n\n"
        + _table(pd.DataFrame(rows, columns=cols), cols)
        + "\n"
    )
    return [md, plot]


def _load(sweep_dir: Path) -> Sweep:
    if not (sweep_dir / "sweep.yaml").is_file():
        raise SpecError(f"{sweep_dir}: not a sweep directory (no sweep.yaml)")
    return parse_sweep(load_yaml(sweep_dir / "sweep.yaml"))
