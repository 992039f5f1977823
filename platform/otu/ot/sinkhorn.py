r"""Entropic OT between two feature batches (uniform weights): the Sinkhorn plan's transport cost
⟨T^ε, C⟩ (:func:`sinkhorn_cost`, DLFD's OT term) and the entropic cost OT_ε (:func:`sinkhorn_loss`,
backed by geomloss).

For x (n×D), y (m×D), a = 1/n, b = 1/m, a cost matrix C and a temperature ε, the Sinkhorn plan is

.. math::  T^\varepsilon = \arg\min_{\pi \in \Pi(a, b)} \langle \pi, C\rangle
           + \varepsilon\,\mathrm{KL}(\pi \,\|\, a \otimes b), \qquad
           T^\varepsilon_{ij} = \exp\big((f_i + g_j - C_{ij})/\varepsilon\big)

and the two quantities are

.. math::  \texttt{sinkhorn\_cost} = \langle T^\varepsilon, C\rangle, \qquad
           \texttt{sinkhorn\_loss} = OT_\varepsilon = \langle T^\varepsilon, C\rangle
           + \varepsilon\,\mathrm{KL}(T^\varepsilon \,\|\, a \otimes b)
           = \langle a, f\rangle + \langle b, g\rangle.

Costs (``cost=``):

* ``"sqeuclidean"``: C_ij = ‖x_i − y_j‖² — the full square, as POT's ``ot.dist(x, y)``. (geomloss's own
  default for p = 2 is ‖x_i − y_j‖²/2; it is *not* used here.)
* ``"cosine"``: C_ij = 1 − cos(x_i, y_j) ∈ [0, 2], as ``ot.dist(x, y, metric="cosine")`` and DLFD.

Relation to POT: T^ε is ``ot.sinkhorn(a, b, C, reg=ε)`` (KL to a⊗b and POT's negative entropy differ
by a constant on Π(a, b)); ``sinkhorn_cost`` is ``(ot.sinkhorn(a, b, C, ε) * C).sum()`` =
``ot.sinkhorn2(a, b, C, ε)``, and ``sinkhorn_loss`` adds ε·KL(T^ε ‖ a⊗b) to it.

``sinkhorn_cost`` (the DLFD paper's and authors' ⟨T^λ, C⟩) solves for T^ε without a graph
(:func:`sinkhorn_plan`: ε-scaling and damped Newton steps on the dual potentials, float64, to
‖T1 − a‖₁ < ``tol`` — a converged plan in some 20–40 (n+m)-sized solves where plain Sinkhorn at
ε = 0.01 on cosine costs still misses the marginals by 1e-6 after 10⁴ sweeps). Its gradient is the
derivative of ⟨T^ε(C), C⟩ *including* the plan's dependence on C — what backpropagating through the
iterations converges to (the authors unroll 50 of them) — taken in closed form by implicit
differentiation. With W = T ∘ C, s = [W1; Wᵀ1]/ε and H = [[diag(T1), T], [Tᵀ, diag(Tᵀ1)]] (ε times
the Jacobian of the marginals in the potentials; null space (1, −1), to which s is orthogonal),

.. math::  \frac{\partial \langle T, C\rangle}{\partial C_{ij}} = T_{ij} - W_{ij}/\varepsilon
           + T_{ij}\,(z_i + z'_j), \qquad H\,[z; z'] = s,

solved as (H + vvᵀ)[z; z'] = s with v = (1, −1)/√(n+m): one (n+m)×(n+m) solve, a few n×m matrices
of memory.

``sinkhorn_loss`` differentiates by the envelope theorem — ∇_{x_i} = Σ_j π_ij ∇_x C(x_i, y_j) — not
through the iterations. Accuracy: geomloss anneals ε from diameter^p down to blur^p (ratio scaling^p,
one Sinkhorn update per value, then one extrapolation step) instead of iterating to convergence, so
value and gradient approximate those of the converged problem better as ``scaling`` → 1. Measured
against POT on 40×30 Gaussian clouds (both costs): value error ≈ 1 % at 0.9, ≈ 0.1 % at 0.99, < 1e-4
at 0.999; gradient relative L2 error ≈ 25 % at 0.9 (cosine similarity ≈ 0.96–0.97), 6–9 % at 0.99,
1–2 % at 0.999 — the cost grows as 1/log(1/scaling). Temperature: ε = blur**p (geomloss's
convention). ``debias=True`` returns the Sinkhorn divergence OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
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


def _check_batches(x: Tensor, y: Tensor, cost: str) -> None:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)}, got {cost!r}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, D) and (m, D); got {tuple(x.shape)} and {tuple(y.shape)}")


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
    _check_batches(x, y, cost)
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


ANNEAL = 0.25
"""ε-scaling ratio of :func:`sinkhorn_plan`: each stage solves at ¼ of the previous temperature."""
STAGE_TOL = 1e-2
"""‖T1 − a‖₁ at which an intermediate ε-scaling stage hands over to the next."""


def sinkhorn_plan(cost: Tensor, eps: float, max_iter: int = 200, tol: float = 1e-9) -> Tensor:
    r"""The Sinkhorn plan T^ε of an (n, m) cost matrix with uniform marginals, in float64, no gradient.

    Dual ascent on the potentials (f, g) with ε-scaling: the temperature starts at max C and shrinks
    by :data:`ANNEAL` per stage down to ε, warm-starting each stage. A step is a damped Newton step
    (Sinkhorn–Newton, Brauer et al. 2017): [df; dg] = ε (H + vvᵀ)⁻¹ [a − T1; b − Tᵀ1] (H as in the
    module docstring), halved until the marginal residual shrinks; a log-domain Sinkhorn sweep
    f ← ε log a − ε LSE_j((g_j − C_ij)/ε), g ← ε log b − ε LSE_i((f_i − C_ij)/ε) when it never does.
    Stops at ‖T1 − a‖₁ < ``tol`` at ε or after ``max_iter`` steps in all (then at ε after one sweep,
    should the budget end in an earlier stage)."""
    c = cost.detach().to(torch.float64)
    n, m = c.shape
    marginals = torch.cat([c.new_full((n,), 1 / n), c.new_full((m,), 1 / m)])
    null = torch.cat([c.new_ones(n), -c.new_ones(m)]) / math.sqrt(n + m)
    f, g = c.new_zeros(n), c.new_zeros(m)
    temp = max(float(c.max()), eps)
    steps = 0
    while True:
        plan = _plan(c, temp, f, g)
        residual = marginals - torch.cat([plan.sum(1), plan.sum(0)])
        if residual[:n].abs().sum() < (tol if temp == eps else STAGE_TOL):
            if temp == eps:
                return plan
            temp = max(temp * ANNEAL, eps)
            continue
        if steps == max_iter:
            return plan if temp == eps else _plan(c, eps, *_sweep(c, eps, g, n, m))
        steps += 1
        f, g = _newton_step(c, temp, f, g, plan, residual, marginals, null) or _sweep(c, temp, g, n, m)


def _plan(c: Tensor, temp: float, f: Tensor, g: Tensor) -> Tensor:
    """T_ij = exp((f_i + g_j − C_ij)/temp)."""
    return torch.exp((f[:, None] + g[None, :] - c) / temp)


def marginal_jacobian(plan: Tensor) -> Tensor:
    """H = [[diag(T1), T], [Tᵀ, diag(Tᵀ1)]]: the Jacobian of the marginals (T1, Tᵀ1) in the potentials
    (f, g), times ε; symmetric positive semi-definite with null space (1, −1)."""
    top = torch.cat([torch.diag(plan.sum(1)), plan], 1)
    return torch.cat([top, torch.cat([plan.T, torch.diag(plan.sum(0))], 1)])


def _newton_step(
    c: Tensor, temp: float, f: Tensor, g: Tensor, plan: Tensor, residual: Tensor, marginals: Tensor, null: Tensor
) -> tuple[Tensor, Tensor] | None:
    """(f, g) after the damped Newton step, or None if no step length ≥ 2⁻²⁰ lowers ‖residual‖₂."""
    n = len(f)
    step, info = torch.linalg.solve_ex(marginal_jacobian(plan) + torch.outer(null, null), temp * residual)
    if info.item() != 0 or not torch.isfinite(step).all():
        return None
    size, before = 1.0, residual.norm()
    for _ in range(21):
        f_new, g_new = f + size * step[:n], g + size * step[n:]
        trial = _plan(c, temp, f_new, g_new)
        if (marginals - torch.cat([trial.sum(1), trial.sum(0)])).norm() < before:
            return f_new, g_new
        size /= 2
    return None


def _sweep(c: Tensor, temp: float, g: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """One log-domain Sinkhorn sweep (rows, then columns)."""
    f = temp * (-math.log(n) - torch.logsumexp((g[None, :] - c) / temp, dim=1))
    return f, temp * (-math.log(m) - torch.logsumexp((f[:, None] - c) / temp, dim=0))


class _PlanCost(torch.autograd.Function):
    """⟨T^ε(C), C⟩ with the closed-form implicit gradient of the module docstring."""

    @staticmethod
    def forward(ctx: Any, cost: Tensor, eps: float, max_iter: int, tol: float) -> Tensor:
        plan = sinkhorn_plan(cost, eps, max_iter, tol)
        ctx.save_for_backward(cost, plan)
        ctx.eps = eps
        return (plan * cost.detach().to(plan.dtype)).sum().to(cost.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        cost, plan = ctx.saved_tensors
        eps = ctx.eps
        n, m = plan.shape
        w = plan * cost.detach().to(plan.dtype)
        s = torch.cat([w.sum(1), w.sum(0)]) / eps
        null = torch.cat([plan.new_ones(n), -plan.new_ones(m)]) / math.sqrt(n + m)
        z = torch.linalg.solve(marginal_jacobian(plan) + torch.outer(null, null), s)
        d_cost = plan - w / eps + plan * (z[:n, None] + z[None, n:])
        return (grad * d_cost).to(cost.dtype), None, None, None


def sinkhorn_cost(
    x: Tensor,
    y: Tensor,
    eps: float = 0.01,
    cost: CostName = "cosine",
    max_iter: int = 200,
    tol: float = 1e-9,
) -> Tensor:
    r"""Transport cost :math:`\langle T^\varepsilon, C(x, y)\rangle` of the Sinkhorn plan (see the module
    docstring), differentiable in ``x`` and ``y`` (through the plan too).

    Args:
        x, y: feature batches (n, D) and (m, D).
        eps: entropic temperature ε (POT's ``reg``).
        cost: ``"cosine"`` (1 − cos) or ``"sqeuclidean"`` (‖x − y‖²).
        max_iter, tol: the solve stops at ‖T1 − a‖₁ < tol or after max_iter steps (:func:`sinkhorn_plan`).

    Returns:
        A scalar tensor of ``x``'s dtype.
    """
    _check_batches(x, y, cost)
    if eps <= 0 or max_iter < 1 or tol <= 0:
        raise ValueError(f"need eps > 0, max_iter ≥ 1, tol > 0; got eps={eps}, max_iter={max_iter}, tol={tol}")
    matrix = COSTS[cost](x[None], y[None])[0]
    value: Tensor = _PlanCost.apply(matrix, eps, max_iter, tol)
    return value
