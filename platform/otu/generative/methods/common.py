r"""Pieces every method shares: the trainable copy, the training-noise stream, and the unlearning cost

.. math::  c(z, y) = \alpha \cdot \tfrac{1}{d}\|y - G_0(z)\|^2 + \lambda \cdot p_{\text{guide}}(k \mid y),

transport from where the original generator G₀ put z (per-pixel mean squared distance over the d
pixels) plus the guide classifier's probability of the forgotten class k.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from otu.generative.models import MLPGenerator
from otu.generative.prepare import Prepared
from otu.generative.spec import CostWeights

NOISE_SEED_OFFSET = 1
"""Training noise is drawn from a generator seeded with ``seed + 1`` (evaluation noise uses ``seed``)."""


def trainable_copy(original: MLPGenerator) -> MLPGenerator:
    return copy.deepcopy(original).requires_grad_(True)


def noise_stream(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)


@dataclass(frozen=True)
class CostTerms:
    """Per-sample terms of c(z, G(z))."""

    transport: Tensor
    forget: Tensor

    @property
    def total(self) -> Tensor:
        return self.transport + self.forget

    def means(self) -> dict[str, float]:
        """Batch means of the terms, as the methods report them."""
        return {
            "transport_cost": float(self.transport.mean().detach()),
            "forget_cost": float(self.forget.mean().detach()),
        }


class UnlearningCost:
    """c(z, y) for a batch: ``cost(z, y)`` → :class:`CostTerms` (weights already applied)."""

    def __init__(
        self,
        original: MLPGenerator,
        guide: nn.Module,
        forget_class: int,
        forget_weight: float,
        transport_weight: float,
    ) -> None:
        self.original, self.guide = original, guide
        self.forget_class = forget_class
        self.forget_weight, self.transport_weight = forget_weight, transport_weight

    @classmethod
    def of(cls, prepared: Prepared, method: CostWeights) -> UnlearningCost:
        """The cost with ``method``'s weights on ``prepared``'s original generator and guide."""
        return cls(
            prepared.original,
            prepared.guide,
            prepared.data.forget_class,
            method.forget_weight,
            method.transport_weight,
        )

    def __call__(self, z: Tensor, images: Tensor) -> CostTerms:
        with torch.no_grad():
            anchor = self.original(z)
        transport = (images - anchor).flatten(1).square().mean(1)
        p_forget = self.guide(images).softmax(1)[:, self.forget_class]
        return CostTerms(self.transport_weight * transport, self.forget_weight * p_forget)
