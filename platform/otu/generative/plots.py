"""Figures: sample grids of each generator on the same noise (samples the evaluator assigns to the
forgotten class framed in red), and the per-class histogram of generated samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.patches import Rectangle
from torch import nn

from otu.classifiers.train import predict_logits
from otu.figures import plt, save_figure
from otu.generative.metrics import Reference
from otu.generative.models import MLPGenerator


def sample_grids(
    generators: dict[str, MLPGenerator], evaluator: nn.Module, ref: Reference, size: int, path: Path
) -> Path:
    """One panel per generator: the first ``size²`` samples of the evaluation noise, tiled."""
    noise = ref.noise[: size * size]
    fig, axes = plt.subplots(1, len(generators), figsize=(3.2 * len(generators), 3.5), squeeze=False)
    for ax, (name, generator) in zip(axes[0], generators.items(), strict=True):
        images = generator.sample(noise)
        forgotten = predict_logits(evaluator, images).argmax(1) == ref.forget_class
        _, _, h, w = images.shape
        ax.imshow(_tile(images, size), cmap="gray_r", vmin=0, vmax=1)
        for i in torch.nonzero(forgotten).flatten().tolist():
            row, col = divmod(i, size)
            ax.add_patch(
                Rectangle(
                    (col * (w + 1) - 0.5, row * (h + 1) - 0.5),
                    w,
                    h,
                    fill=False,
                    edgecolor="red",
                    lw=1,
                )
            )
        ax.set_title(f"{name}: {int(forgotten.sum())}/{len(noise)} → class {ref.forget_class}", fontsize=9)
        ax.axis("off")
    return save_figure(fig, path, dpi=130)


def class_histogram(shares: dict[str, list[float]], forget_class: int, path: Path) -> Path:
    """Grouped bars: share of samples per predicted class, one bar per generator."""
    num_classes = len(next(iter(shares.values())))
    x = np.arange(num_classes)
    width = 0.8 / len(shares)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.axvspan(forget_class - 0.45, forget_class + 0.45, color="red", alpha=0.08, label="forgotten class")
    for i, (name, values) in enumerate(shares.items()):
        ax.bar(x - 0.4 + (i + 0.5) * width, values, width, label=name)
    ax.set_xticks(x)
    ax.set_xlabel("class predicted by the evaluator")
    ax.set_ylabel("share of generated samples")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=130)


def _tile(images: torch.Tensor, size: int) -> np.ndarray:
    """``size × size`` mosaic of single-channel images with a one-pixel white gap."""
    n, _, h, w = images.shape
    canvas = np.zeros((size * (h + 1) - 1, size * (w + 1) - 1))
    for i in range(n):
        top, left = (k * (d + 1) for k, d in zip(divmod(i, size), (h, w), strict=True))
        canvas[top : top + h, left : left + w] = images[i, 0].numpy()
    return canvas
