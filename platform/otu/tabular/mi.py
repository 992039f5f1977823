"""Plug-in mutual information between soft predictions and a discrete variable (Xu & Strohmer).

For softmax outputs p_i ∈ Δ^C and labels z_i ∈ {0, …, G−1} of N samples, the joint is estimated as
P̂(ŷ=c, Z=g) = (1/N) Σ_i p_ic·1{z_i = g}; with the marginals P̂(ŷ=c) = Σ_g P̂(c, g) and
P̂(Z=g) = N_g/N,  Î(Ŷ; Z) = Σ_{c,g} P̂(c, g) · log( P̂(c, g) / (P̂(ŷ=c) P̂(Z=g)) )  (nats).
It is differentiable in p, so it serves as the regulariser of data-point unlearning.
"""

from __future__ import annotations

import torch

EPS = 1e-10
"""Probability clamp and log guard of the authors' estimator."""


def plugin_mi(probs: torch.Tensor, z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Î(Ŷ; Z) for ``probs`` (N×C, rows summing to one) and integer labels ``z`` (N); probabilities
    are clamped to [eps, 1−eps] and eps guards the logarithm, as in the authors' code."""
    probs = probs.clamp(eps, 1.0 - eps)
    onehot = torch.nn.functional.one_hot(z.long(), int(z.max()) + 1).to(probs.dtype)  # N×G
    joint = onehot.T @ probs / len(probs)  # G×C
    p_z = onehot.mean(dim=0)  # G
    p_y = joint.sum(dim=0)  # C
    return (joint * torch.log(joint / (p_z[:, None] * p_y[None, :] + eps) + eps)).sum()
