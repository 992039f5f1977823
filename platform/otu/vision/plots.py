"""Forget vs unseen loss distributions of the original, retrained and unlearned models side by side
(the DLFD paper's Figure 3): one panel per model, the same bins in every panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import nn

from otu.figures import plt, save_figure
from otu.vision.metrics import MIAProbe, per_sample_losses


def loss_histograms(models: dict[str, nn.Module], probe: MIAProbe, path: Path) -> Path:
    return save_figure(loss_histogram_figure(models, probe), path)


def loss_histogram_figure(models: dict[str, nn.Module], probe: MIAProbe) -> Figure:
    """Histograms of log10 cross-entropy on the probe's forget and unseen test samples, one panel
    per model; a model that forgot puts the two distributions on top of each other."""
    logs = {
        name: {
            part: np.log10(np.maximum(per_sample_losses(model, *getattr(probe, part)), 1e-12))
            for part in ("forget", "unseen")
        }
        for name, model in models.items()
    }
    values = np.concatenate([v for parts in logs.values() for v in parts.values()])
    bins = np.linspace(values.min(), values.max(), 40)
    fig, axes = plt.subplots(1, len(logs), figsize=(4.2 * len(logs), 3.4), sharex=True, sharey=True, squeeze=False)
    for ax, (name, parts) in zip(axes[0], logs.items(), strict=True):
        ax.hist(
            parts["unseen"], bins=bins, alpha=0.6, color="tab:blue", label=f"unseen test (n={len(parts['unseen'])})"
        )
        ax.hist(parts["forget"], bins=bins, alpha=0.6, color="tab:red", label=f"forget (n={len(parts['forget'])})")
        ax.set_title(name)
        ax.set_xlabel("log10 cross-entropy loss")
    axes[0][0].set_ylabel("samples")
    axes[0][0].legend(fontsize=8)
    return fig


def ulira_roc(scores: dict[str, np.ndarray], path: Path) -> Path:
    """U-LiRA ROC per model on log-log axes (LiRA and U-LiRA read the low-FPR corner):
    ``scores[model]`` its forget images' scores (positives), ``scores["negatives"]`` the never-saw-it
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
    ax.set_title("U-LiRA on the forget images")
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
    axes[0][0].set_ylabel("forget images")
    return save_figure(fig, path)
