"""The sweep's Pareto plot: every finished trial (with seed error bars), the front numbered, the
original model and the retrained oracle as reference points, and a table of the numbered trials'
knobs beside the axes (so 100+ trials stay readable: only front points carry a label)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from otu.figures import place_labels, plt, save_figure
from otu.report.pareto import finished

Reference = Mapping[str, tuple[float, float]]
"""Metric → (mean, std over seeds) of one reference model."""
REFERENCE_STYLE = {
    "original": {"marker": "*", "s": 190, "color": "black", "label": "original model"},
    "retrained": {"marker": "D", "s": 70, "color": "tab:green", "label": "retrained oracle"},
}
MAX_TABLE_ROWS = 40


def plot_front(
    table: pd.DataFrame,
    front: pd.DataFrame,
    metrics: Sequence[str],
    modes: Sequence[str],
    knob_cols: list[str],
    path: Path,
    title: str = "",
    references: Mapping[str, Reference] | None = None,
) -> Path:
    fig = front_figure(table, front, metrics, modes, knob_cols, title, references or {})
    return save_figure(fig, path, layout=False)


def front_figure(
    table: pd.DataFrame,
    front: pd.DataFrame,
    metrics: Sequence[str],
    modes: Sequence[str],
    knob_cols: list[str],
    title: str,
    references: Mapping[str, Reference],
) -> Figure:
    """Scatter of the first two objectives (objective vs trial number for one objective)."""
    done = finished(table, metrics)
    front = front.sort_values(metrics[0]) if len(metrics) > 1 else front
    two = len(metrics) > 1
    x_name, y_name = (metrics[0], metrics[1]) if two else ("trial", metrics[0])
    rows = _table_rows(front, knob_cols, metrics)
    table_width = min(9.0, 0.062 * sum(max(len(c) for c in col) for col in zip(*rows, strict=True)) + 0.6)
    height = max(5.0, 0.22 * (min(len(rows), MAX_TABLE_ROWS) + 2) + 1.5)
    fig, (ax, side) = plt.subplots(
        1, 2, figsize=(7 + table_width, height), gridspec_kw={"width_ratios": [7, table_width]}
    )
    side.axis("off")

    def xy(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        x = df[x_name].to_numpy(float) if two else np.array([done.index.get_loc(i) + 1 for i in df.index], float)
        return x, df[y_name].to_numpy(float)

    markers: list[tuple[float, float]] = []
    if not done.empty:
        x, y = xy(done)
        x_err = done[f"{x_name}_std"].to_numpy(float) if f"{x_name}_std" in done else None
        y_err = done[f"{y_name}_std"].to_numpy(float) if f"{y_name}_std" in done else None
        if x_err is not None or y_err is not None:
            ax.errorbar(
                x, y, xerr=x_err, yerr=y_err, fmt="none", ecolor="0.75", lw=0.8, zorder=1, label="± std over seeds"
            )
        many = len(done) > 50
        ax.scatter(
            x,
            y,
            s=10 if many else 22,
            color="0.55",
            alpha=0.6 if many else 0.9,
            zorder=2,
            label=f"trials (n={len(done)})",
        )
        fx, fy = xy(front)
        ax.plot(fx, fy, "o-" if two else "o", color="C3", ms=5, zorder=3, label="Pareto front")
        markers += list(zip(fx, fy, strict=True))
    ref_points = []
    for name, ref in references.items():
        if y_name not in ref or (two and x_name not in ref):
            continue
        style = REFERENCE_STYLE.get(name, {"marker": "s", "s": 60, "color": "tab:purple", "label": name})
        (ry, ry_std) = ref[y_name]
        if two:
            rx, rx_std = ref[x_name]
            ax.errorbar(
                [rx],
                [ry],
                xerr=[rx_std] if rx_std else None,
                yerr=[ry_std] if ry_std else None,
                fmt="none",
                ecolor=style["color"],
                lw=0.8,
                zorder=4,
            )
            ax.scatter([rx], [ry], zorder=5, edgecolors="white", linewidths=0.6, **style)
            ref_points.append((rx, ry, name))
            markers.append((rx, ry))
        else:
            ax.axhline(ry, color=style["color"], ls="--", lw=1, label=style["label"])
    ax.set_xlabel(f"{x_name} ({modes[0]})" if two else "trial")
    ax.set_ylabel(f"{y_name} ({modes[-1]})")
    ax.set_title(title)
    ax.margins(0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    if rows:
        _draw_table(side, rows)
    fig.tight_layout()
    fig.canvas.draw()

    taken = _marker_boxes(ax, markers)
    if ref_points:
        place_labels(
            ax,
            [p[0] for p in ref_points],
            [p[1] for p in ref_points],
            [p[2] for p in ref_points],
            fontsize=8,
            taken=taken,
        )
    if not front.empty:
        fx, fy = xy(front)
        place_labels(ax, fx, fy, [str(i + 1) for i in range(len(front))], taken=taken)
    return fig


def _table_rows(front: pd.DataFrame, knob_cols: Sequence[str], metrics: Sequence[str]) -> list[list[str]]:
    """Header + one row per front trial: its number, knobs and objectives (mean ± std)."""
    if front.empty:
        return []
    head = ["#", *(c.removeprefix("config/").split(".")[-1] for c in knob_cols), *metrics]
    rows = [head]
    for i, (_, row) in enumerate(front.iterrows()):
        cells = [str(i + 1), *(fmt(row[c]) for c in knob_cols)]
        for m in metrics:
            std = row.get(f"{m}_std")
            cells.append(fmt(row[m]) + (f" ± {std:.2g}" if std is not None and pd.notna(std) else ""))
        rows.append(cells)
    return rows


def _draw_table(side, rows: list[list[str]]) -> None:
    shown = rows[: MAX_TABLE_ROWS + 1]
    side.set_title("Pareto front", fontsize=9, loc="left")
    tab = side.table(cellText=shown[1:], colLabels=shown[0], loc="upper left", cellLoc="left")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.auto_set_column_width(list(range(len(shown[0]))))
    for cell in tab.get_celld().values():
        cell.set_linewidth(0.3)
        cell.set_height(0.035 * 5.0 / max(5.0, 0.22 * (len(shown) + 1) + 1.5))
    if len(rows) > len(shown):
        side.text(
            0,
            0,
            f"… and {len(rows) - len(shown)} more front trials in summary.md",
            fontsize=7,
            transform=side.transAxes,
        )


def _marker_boxes(ax, points: list[tuple[float, float]], half: float = 4.0) -> list[Bbox]:
    """Small display boxes around the drawn markers, so no label covers one."""
    boxes = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        boxes.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    return boxes


def fmt(value) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)
