r"""Entropic OT cost between two feature batches (uniform weights), backed by geomloss.

For x (n×D), y (m×D), a = 1/n, b = 1/m, a cost matrix C and a temperature ε,

.. math::  OT_\varepsilon(x, y) = \min_{\pi \in \Pi(a, b)} \langle \pi, C\rangle
           + \varepsilon\,\mathrm{KL}(\pi \,\|\, a \otimes b)
           = \langle a, f\rangle + \langle b, g\rangle  \quad\text{(optimal dual potentials)}

Costs (``cost=``):

* ``"sqeuclidean"``: C_ij = ‖x_i − y_j‖² — the full square, as POT's ``ot.dist(x, y)``. (geomloss's own
  default for p = 2 is ‖x_i − y_j‖²/2; it is *not* used here.)
* ``"cosine"``: C_ij = 1 − cos(x_i, y_j) ∈ [0, 2], as ``ot.dist(x, y, metric="cosine")`` and DLFD.

Temperature: ε = blur**p (geomloss's convention; p only links blur to ε here). DLFD's ε = 0.01 on
the cosine cost is ``blur=0.1, p=2`` (or ``blur=0.01, p=1``).

Relation to POT: the optimal plan π is the same as ``ot.sinkhorn(a, b, C, reg=ε)`` (KL to a⊗b and
POT's negative entropy differ by a constant on Π(a, b)), and

.. math::  \texttt{sinkhorn\_loss} = \texttt{ot.sinkhorn2}(a, b, C, \varepsilon)
           + \varepsilon\,\mathrm{KL}(\pi \,\|\, a \otimes b)

since ``sinkhorn2`` returns only the linear term ⟨π, C⟩. Gradients (w.r.t. x and y) use the
envelope theorem — ∇_{x_i} = Σ_j π_ij ∇_x C(x_i, y_j) — not backpropagation through the iterations,
so memory stays at a few n×m matrices.

Accuracy: geomloss anneals ε from diameter^p down to blur^p (ratio scaling^p, one Sinkhorn update
per value, then one extrapolation step) instead of iterating to convergence, so value and gradient
approximate those of the converged problem better as ``scaling`` → 1. Measured against POT on
40×30 Gaussian clouds (both costs): value error ≈ 1 % at 0.9, ≈ 0.1 % at 0.99, < 1e-4 at 0.999;
gradient relative L2 error ≈ 25 % at 0.9 (cosine similarity ≈ 0.96–0.97), 6–9 % at 0.99, 1–2 % at
0.999 — the cost grows as 1/log(1/scaling).
``debias=True`` returns the Sinkhorn divergence OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from geomloss import SamplesLoss
from torch import Tensor
from torch.nn import functional as F

CostName = Literal["sqeuclidean", "cosine"]


def sqeuclidean_cost(x: Tensor, y: Tensor) -> Tensor:
    """Batched ‖x_i − y_j‖²: (B, N, D), (B, M, D) → (B, N, M)."""
    sq = x.square().sum(-1)[..., :, None] + y.square().sum(-1)[..., None, :]
    return (sq - 2 * x @ y.transpose(-1, -2)).clamp_min(0)


def cosine_cost(x: Tensor, y: Tensor) -> Tensor:
    """Batched 1 − cos(x_i, y_j): (B, N, D), (B, M, D) → (B, N, M); norms clamped at 1e-8."""
    return 1 - F.normalize(x, dim=-1, eps=1e-8) @ F.normalize(y, dim=-1, eps=1e-8).transpose(-1, -2)


COSTS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sqeuclidean": sqeuclidean_cost,
    "cosine": cosine_cost,
}


def sinkhorn_loss(
    x: Tensor,
    y: Tensor,
    blur: float = 0.01,
    cost: CostName = "sqeuclidean",
    p: float = 2,
    scaling: float = 0.9,
    debias: bool = False,
) -> Tensor:
    r"""Entropic OT cost :math:`OT_\varepsilon(x, y)`, ε = blur**p (see the module docstring).

    Args:
        x, y: feature batches (n, D) and (m, D); differentiable in both.
        blur: temperature scale, ε = blur**p.
        cost: ``"sqeuclidean"`` (‖x − y‖²) or ``"cosine"`` (1 − cos).
        p: exponent relating blur and ε.
        scaling: ε-annealing ratio of geomloss, in (0, 1); closer to 1 is slower and more exact.
        debias: return the Sinkhorn divergence instead of the raw entropic cost.

    Returns:
        A scalar tensor.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, D) and (m, D); got {tuple(x.shape)} and {tuple(y.shape)}")
    if blur <= 0 or not 0 < scaling < 1:
        raise ValueError(f"need blur > 0 and 0 < scaling < 1; got blur={blur}, scaling={scaling}")
    # The annealing starts at ε = diameter**p: the largest cost. For cosine that is 2 whatever the
    # feature scale; for sqeuclidean geomloss's bounding-box estimate D gives D**2 = max cost.
    diameter = 2.0 ** (1.0 / p) if cost == "cosine" else None
    loss = SamplesLoss(
        "sinkhorn",
        p=p,
        blur=blur,
        scaling=scaling,
        debias=debias,
        cost=COSTS[cost],
        diameter=diameter,
        backend="tensorized",
    )
    return loss(x, y)
