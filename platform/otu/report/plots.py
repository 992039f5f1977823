"""Small figures shared by the runtime and the reports."""

from __future__ import annotations

from pathlib import Path

from otu.figures import plt, save_figure


def plot_dynamics(rows: list[dict[str, float]], path: Path) -> Path:
    """Each metric over unlearning steps (one panel per metric)."""
    names = [k for k in rows[0] if k != "step"]
    cols = min(3, len(names))
    n_rows = -(-len(names) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3 * n_rows), squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes.flat, names, strict=False):
        ax.plot(steps, [r[name] for r in rows], "o-")
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    return save_figure(fig, path, dpi=110)
