"""Figures of the LLM family: per-split probability / ROUGE bars and forget truth-ratio histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otu.llm.evaluation import QA_SPLITS, ModelStats


def write_plots(stats: dict[str, ModelStats], out_dir: Path) -> list[Path]:
    from otu.figures import plt, save_figure

    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    width = 0.8 / max(1, len(stats))
    x = np.arange(len(QA_SPLITS))
    for ax, metric in zip(axes, ("prob", "rouge"), strict=True):
        for k, (name, s) in enumerate(stats.items()):
            values = [getattr(s, metric)[split].mean() for split in QA_SPLITS]
            ax.bar(x + k * width, values, width, label=name)
        ax.set_xticks(x + width * (len(stats) - 1) / 2, QA_SPLITS)
        ax.set_title("answer probability" if metric == "prob" else "ROUGE-L recall")
        ax.set_ylim(0, 1.05)
    axes[0].legend()
    paths.append(save_figure(fig, out_dir / "splits.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, s in stats.items():
        ax.hist(np.log(s.truth_ratio["forget"]), bins=20, alpha=0.5, label=name)
    ax.set_xlabel("log truth ratio on forget (perturbed / paraphrased)")
    ax.set_ylabel("items")
    ax.legend()
    paths.append(save_figure(fig, out_dir / "forget_truth_ratio.png"))
    return paths
