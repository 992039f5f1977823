"""Forget vs unseen loss distributions per model (the DLFD paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from otu.figures import plt, save_figure
from otu.vision.metrics import MIAProbe, per_sample_losses


def loss_histogram(model: nn.Module, probe: MIAProbe, title: str, path: Path) -> Path:
    """Overlaid histograms of log10 cross-entropy on the probe's forget and unseen test samples."""
    forget = np.log10(np.maximum(per_sample_losses(model, *probe.forget), 1e-12))
    unseen = np.log10(np.maximum(per_sample_losses(model, *probe.unseen), 1e-12))
    bins = np.linspace(min(forget.min(), unseen.min()), max(forget.max(), unseen.max()), 40)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(unseen, bins=bins, alpha=0.6, label=f"unseen test (n={len(unseen)})", color="tab:blue")
    ax.hist(forget, bins=bins, alpha=0.6, label=f"forget (n={len(forget)})", color="tab:red")
    ax.set_xlabel("log10 cross-entropy loss")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)
