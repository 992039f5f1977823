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
