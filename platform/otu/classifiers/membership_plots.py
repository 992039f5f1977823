"""Figures of the per-example membership attacks (:mod:`otu.classifiers.membership`): U-LiRA's ROC at
log scale and the challenge's per-example ε histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otu.figures import plt, save_figure


def ulira_roc(scores: dict[str, np.ndarray], path: Path) -> Path:
    """U-LiRA ROC per model on log-log axes (LiRA and U-LiRA read the low-FPR corner):
    ``scores[model]`` its forget examples' scores (positives), ``scores["negatives"]`` the never-saw-it
    shadows'."""
    from sklearn.metrics import roc_curve

    negatives = scores["negatives"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, positives in scores.items():
        if name == "negatives":
            continue
        y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
        fpr, tpr, _ = roc_curve(y, np.concatenate([positives, negatives]))
        ax.plot(fpr, tpr, label=name)
    floor = 1 / (2 * max(len(negatives), 1))
    ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("U-LiRA on the forget examples")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def epsilon_histogram(epsilons: dict[str, np.ndarray], path: Path) -> Path:
    """Per-example ε of the unlearning challenge (δ = 1e-5), one panel per model, the same bins (a
    deterministic model sits at the scorer's cap, 50)."""
    bins = np.linspace(0, max(1.0, *(float(e.max()) for e in epsilons.values())), 41)
    fig, axes = plt.subplots(1, len(epsilons), figsize=(4.2 * len(epsilons), 3.4), sharey=True, squeeze=False)
    for ax, (name, eps) in zip(axes[0], epsilons.items(), strict=True):
        ax.hist(eps, bins=bins, color="tab:purple")
        ax.set_title(f"{name} (mean ε {eps.mean():.2f})")
        ax.set_xlabel("per-example ε")
    axes[0][0].set_ylabel("forget examples")
    return save_figure(fig, path)
