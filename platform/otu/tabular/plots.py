"""Figures of the tabular family: the utility–leakage frontier over t, and accuracies of the
data-point unlearning models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from otu.figures import place_labels, plt, save_figure


def frontier(curves: Mapping[str, Sequence[Mapping[str, float]]], variant: str, current_t: float, path: Path) -> Path:
    return save_figure(frontier_figure(curves, variant, current_t), path, layout=False)


def frontier_figure(curves: Mapping[str, Sequence[Mapping[str, float]]], variant: str, current_t: float) -> Figure:
    """Utility AUC against leakage AUC over t, one curve per barycenter variant (``curves`` hold
    t, utility_auc, leakage_auc per point): t = 0 is the original features (marked), the run's
    own variant and t are starred, and its points carry their t."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (name, points) in enumerate(curves.items()):
        style = "o-" if name == variant else "s--"
        ax.plot(
            [p["leakage_auc"] for p in points],
            [p["utility_auc"] for p in points],
            style,
            color=f"C{k}",
            ms=4,
            label=f"{name} barycenter",
        )
    points = curves[variant]
    start = points[0]
    ax.scatter(
        [start["leakage_auc"]],
        [start["utility_auc"]],
        marker="*",
        s=190,
        color="black",
        zorder=5,
        label="original (t = 0)",
    )
    here = min(points, key=lambda p: abs(p["t"] - current_t))
    ax.plot(
        here["leakage_auc"],
        here["utility_auc"],
        "*",
        ms=14,
        color="tab:red",
        label=f"this run ({variant}, t = {current_t:.2g})",
    )
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("leakage AUC (adversary predicting the sensitive group)")
    ax.set_ylabel("utility AUC (predicting the target)")
    ax.set_title("W₂-barycenter frontier over t")
    ax.margins(0.15)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.canvas.draw()
    place_labels(
        ax, [p["leakage_auc"] for p in points], [p["utility_auc"] for p in points], [f"t={p['t']:.2g}" for p in points]
    )
    return fig


def accuracies(metrics: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Grouped bars of retain / forget / test accuracy per model, Î in the legend."""
    parts = ("retain_acc", "forget_acc", "test_acc")
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(metrics)
    for i, (name, values) in enumerate(metrics.items()):
        xs = [j + i * width for j in range(len(parts))]
        ax.bar(xs, [values[p] for p in parts], width, label=f"{name} (Î = {values['mi']:.3g})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(parts))], [p.removesuffix("_acc") for p in parts])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(metrics), frameon=False)
    return save_figure(fig, path)
