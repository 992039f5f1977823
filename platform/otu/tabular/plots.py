"""Figures of the tabular family: the utility–leakage frontier over t, and accuracies of the
data-point unlearning models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from otu.figures import plt, save_figure


def frontier(points: Sequence[Mapping[str, float]], current_t: float, path: Path) -> Path:
    """Utility AUC against leakage AUC, one point per t (``points`` hold t, utility_auc,
    leakage_auc), the run's own t marked."""
    fig, ax = plt.subplots(figsize=(5, 4))
    leak = [p["leakage_auc"] for p in points]
    util = [p["utility_auc"] for p in points]
    ax.plot(leak, util, "o-", color="tab:blue")
    for p in points:
        ax.annotate(f"{p['t']:.2g}", (p["leakage_auc"], p["utility_auc"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    here = min(points, key=lambda p: abs(p["t"] - current_t))
    ax.plot(here["leakage_auc"], here["utility_auc"], "*", ms=14, color="tab:red", label=f"t = {current_t:.2g}")
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("leakage AUC (adversary predicting the sensitive group)")
    ax.set_ylabel("utility AUC (predicting the target)")
    ax.set_title("W₂-barycenter frontier over t")
    ax.legend(loc="best")
    return save_figure(fig, path)


def accuracies(metrics: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Grouped bars of retain / forget / test accuracy per model, Î in the legend."""
    parts = ("retain_acc", "forget_acc", "test_acc")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(metrics)
    for i, (name, values) in enumerate(metrics.items()):
        xs = [j + i * width for j in range(len(parts))]
        ax.bar(xs, [values[p] for p in parts], width, label=f"{name} (Î = {values['mi']:.3g})")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(parts))], [p.removesuffix("_acc") for p in parts])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)
