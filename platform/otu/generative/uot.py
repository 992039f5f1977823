r"""The semi-dual of unbalanced OT (UOTM, Choi, Choi & Kang 2023) as two minibatch losses.

Unbalanced OT between the noise law μ and the target ν (retained-class data) relaxes both marginals
with a τ-weighted f-divergence, Ψ = τ·f:

.. math::  \mathrm{UOT}(\mu, \nu) = \inf_{\pi \ge 0} \int c\,d\pi + \tau D_f(\pi_0\|\mu) + \tau D_f(\pi_1\|\nu)
           = \sup_v \int -\Psi^*(-v^c(z))\,d\mu(z) + \int -\Psi^*(-v(y))\,d\nu(y),

with :math:`v^c(z) = \inf_y c(z, y) - v(y)` and :math:`\Psi^*(t) = \tau f^*(t/\tau)`. The generator
G parametrises the inner arg-min, :math:`G(z) \approx \arg\min_y c(z, y) - v(y)`, which gives

.. math::  L_v = \mathbb{E}_z \Psi^*\big(v(G(z)) - c(z, G(z))\big) + \mathbb{E}_y \Psi^*(-v(y))
           + \tfrac{\gamma}{2}\mathbb{E}_y \|\nabla v(y)\|^2, \qquad
           L_G = \mathbb{E}_z \big[c(z, G(z)) - v(G(z))\big],

minimised alternately (the R1 term regularises the potential, as in the UOTM code). Conjugates:

* KL, f(s) = s log s − s + 1:  Ψ*(t) = τ (e^{t/τ} − 1), continued linearly (C¹, still convex and
  increasing) above t/τ = 30 so a small τ cannot overflow;
* χ², f(s) = (s − 1)²:         Ψ*(t) = τ (u + u²/4), u = max(t/τ, −2)   (= −τ for t ≤ −2τ).

As τ → ∞ both tend to Ψ*(t) = t, the balanced (hard-marginal) semi-dual; a small τ lets mass be
created or destroyed cheaply, so G may leave parts of ν uncovered rather than pay a high cost.

One meaning of τ: here τ weights the divergences. UOTM's code weights the *cost* instead,
:math:`\inf \int \tau_U c\,d\pi + D_f(\pi_0\|\mu) + D_f(\pi_1\|\nu)` with Ψ* = f*; dividing the
objective above by τ shows the two have the same plan when :math:`\tau = 1/\tau_U` (the value is
τ times UOTM's). UOTM's CIFAR-10 τ_U = 1e-3 is τ = 1000 here, for the same cost scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Conjugate = Callable[[Tensor], Tensor]
DIVERGENCES = ("kl", "chi2")
KL_LINEAR_FROM = 30.0
"""t/τ above which the KL conjugate continues along its tangent (e^30 ≈ 1e13 is finite in fp32)."""


def conjugate(divergence: str, tau: float) -> Conjugate:
    """Ψ*(t) = τ f*(t/τ) for ``"kl"`` or ``"chi2"`` (see the module docstring)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if divergence == "kl":

        def kl(t: Tensor) -> Tensor:
            u = t / tau
            capped = u.clamp(max=KL_LINEAR_FROM)
            return tau * (torch.expm1(capped) + torch.exp(capped) * (u - capped))

        return kl
    if divergence == "chi2":

        def chi2(t: Tensor) -> Tensor:
            u = F.relu(t / tau + 2) - 2
            return tau * (u + u * u / 4)

        return chi2
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def potential_loss(psi: Conjugate, v_fake: Tensor, cost_fake: Tensor, v_real: Tensor) -> Tensor:
    """L_v without the R1 term: mean Ψ*(v(G(z)) − c(z, G(z))) + mean Ψ*(−v(y))."""
    return psi(v_fake - cost_fake).mean() + psi(-v_real).mean()


def generator_loss(cost_fake: Tensor, v_fake: Tensor) -> Tensor:
    """L_G = mean c(z, G(z)) − v(G(z))."""
    return (cost_fake - v_fake).mean()


def r1_penalty(potential: nn.Module, real: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """``(v(y), γ/2·mean ‖∇_y v(y)‖²)``; the penalty is differentiable in v's parameters."""
    real = real.detach().requires_grad_(gamma > 0)
    v_real = potential(real)
    if gamma == 0:
        return v_real, v_real.new_zeros(())
    (grad,) = torch.autograd.grad(v_real.sum(), real, create_graph=True)
    return v_real, gamma / 2 * grad.flatten(1).square().sum(1).mean()
