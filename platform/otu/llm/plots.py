"""The LLM family's panel figure: answer probability and ROUGE-L recall on forget / retain / world
for each model (original, retrained oracle, unlearned), and the forget truth-ratio histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from otu.llm.evaluation import QA_SPLITS, ModelStats


def write_plots(stats: dict[str, ModelStats], out_dir: Path) -> list[Path]:
    """``splits.png``: see :func:`splits_figure`."""
    from otu.figures import save_figure

    return [save_figure(splits_figure(stats), out_dir / "splits.png")]


def splits_figure(stats: dict[str, ModelStats]):
    """Three panels; bars carry the per-split mean with its standard error."""
    from otu.figures import plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    width = 0.8 / max(1, len(stats))
    x = np.arange(len(QA_SPLITS))
    for ax, metric in zip(axes[:2], ("prob", "rouge"), strict=True):
        for k, (name, s) in enumerate(stats.items()):
            items = [getattr(s, metric)[split] for split in QA_SPLITS]
            means = [v.mean() for v in items]
            errors = [v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in items]
            ax.bar(x + k * width, means, width, yerr=errors, capsize=2, label=name, color=f"C{k}")
        ax.set_xticks(x + width * (len(stats) - 1) / 2, QA_SPLITS)
        ax.set_title("answer probability" if metric == "prob" else "ROUGE-L recall")
        ax.set_ylim(0, 1.22)  # headroom for the legend above the bars
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes[0].legend(fontsize=8, loc="upper center", ncol=len(stats), frameon=False)
    values = np.concatenate([np.log(s.truth_ratio["forget"]) for s in stats.values()])
    bins = np.linspace(values.min(), values.max(), 20) if np.ptp(values) > 0 else 10
    for k, (name, s) in enumerate(stats.items()):
        axes[2].hist(np.log(s.truth_ratio["forget"]), bins=bins, alpha=0.5, label=name, color=f"C{k}")
    axes[2].set_xlabel("log truth ratio on forget (perturbed / paraphrased)")
    axes[2].set_ylabel("items")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_title("forget truth ratio")
    return fig


MUSE_BARS = ("verbmem_f", "knowmem_f", "knowmem_r")


def write_muse_plot(metrics: dict[str, dict[str, float]], out_dir: Path) -> list[Path]:
    """``muse.png``: VerbMem, KnowMem on forget and on retain (ROUGE-L F1, percent) per model."""
    from otu.figures import plt, save_figure

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(MUSE_BARS))
    for k, (name, values) in enumerate(metrics.items()):
        ax.bar(x + k * width, [values[m] for m in MUSE_BARS], width, label=name, color=f"C{k}")
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, MUSE_BARS)
    ax.set_ylabel("ROUGE-L F1 (%)")
    ax.set_ylim(0, 122)
    ax.legend(fontsize=8, loc="upper center", ncol=len(metrics), frameon=False)
    ax.set_title("MUSE criteria")
    return [save_figure(fig, out_dir / "muse.png")]
