"""Figures without a display: matplotlib on the Agg backend, one way to write a figure, and point
labels that do not overlap (:func:`place_labels`: each label tries offsets on growing rings around
its point and takes the first whose box, its text extent on the canvas, meets no box placed before
it and stays inside the axes; lay the figure out before placing, the boxes are display pixels)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.text import Annotation, Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

__all__ = ["label_boxes", "place_labels", "plt", "save_figure"]


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120, layout: bool = True) -> Path:
    """Lay ``fig`` out (unless the caller did, e.g. before placing labels by their extents), write
    it to ``path`` (creating its folder) and free it."""
    if layout:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


LABEL_GID = "otu-label"
RINGS = (5, 11, 18, 27, 38, 52, 70)
"""Offsets (points) tried around each point; beyond the first ring a thin leader line is drawn."""
DIRECTIONS = 12
PAD = 1.5
"""Pixels kept free around each label's box."""


def place_labels(
    ax: Axes,
    xs: Iterable[float],
    ys: Iterable[float],
    texts: Iterable[str],
    fontsize: float = 7,
    taken: list[Bbox] | None = None,
) -> list[Annotation]:
    """Annotate each (x, y) with its text where it overlaps nothing placed so far (``taken`` boxes
    are avoided too and grow with the placed labels). A label with no free spot on any ring is left
    out, so what is drawn never overlaps; the caller decides how to list the rest."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes = taken if taken is not None else []
    placed: list[Annotation] = []
    for x, y, text in zip(xs, ys, texts, strict=True):
        label = _first_free(ax, x, y, text, fontsize, renderer, frame, boxes)
        if label is not None:
            boxes.append(_text_box(label, renderer))
            placed.append(label)
    return placed


def label_boxes(ax: Axes) -> list[Bbox]:
    """The display boxes of the labels :func:`place_labels` put on ``ax`` (for checks), as drawn."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    return [_text_box(t, renderer) for t in ax.texts if t.get_gid() == LABEL_GID]


def _text_box(label: Text, renderer) -> Bbox:
    """The box of the text alone (an annotation's own extent includes its leader line), at the
    position the annotation takes when drawn."""
    if isinstance(label, Annotation):
        label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def _first_free(ax, x, y, text, fontsize, renderer, frame: Bbox, boxes: list[Bbox]) -> Annotation | None:
    """Candidate boxes are computed from the text's measured size (no artist per try); only the
    chosen spot becomes an annotation."""
    probe = ax.text(0, 0, text, fontsize=fontsize)
    extent = probe.get_window_extent(renderer)
    probe.remove()
    w, h = extent.width + 2 * PAD, extent.height + 2 * PAD
    px, py = ax.transData.transform((x, y))
    scale = ax.figure.dpi / 72
    for ring in RINGS:
        for k in range(DIRECTIONS):
            angle = 2 * math.pi * k / DIRECTIONS + math.pi / 4
            dx, dy = ring * math.cos(angle), ring * math.sin(angle)
            ha = "left" if dx > 1 else "right" if dx < -1 else "center"
            va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
            ox, oy = px + dx * scale, py + dy * scale
            x0 = {"left": ox - PAD, "right": ox - w + PAD, "center": ox - w / 2}[ha]
            y0 = {"bottom": oy - PAD, "top": oy - h + PAD, "center": oy - h / 2}[va]
            box = Bbox.from_bounds(x0, y0, w, h)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in boxes):
                return ax.annotate(
                    text,
                    (x, y),
                    xytext=(dx, dy),
                    textcoords="offset points",
                    fontsize=fontsize,
                    ha=ha,
                    va=va,
                    gid=LABEL_GID,
                    bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75},
                    arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.5} if ring > RINGS[0] else None,
                )
    return None
