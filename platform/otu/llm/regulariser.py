r"""OPT-OUT's parameter regulariser λ·Σ_tensors D(θ, θ₀), applied as a gradient between backward and step.

For each trainable tensor (in a fixed order, identically on every rank) the engine gathers the
tensor and its θ₀ twin (ZeRO-3: one pair at a time, so memory is bounded by the largest tensor plus
the n×L projections), :mod:`otu.ot` gives the value and the closed-form gradient, and the engine adds
λ·grad to the tensor's (possibly partitioned) gradient. Projections U are drawn from a seed that
depends on (run seed, step, tensor index) only, so every rank — and a single process — uses the same
directions. Without resampling, sort(W₀U) is cached per tensor and θ₀ is never gathered again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from otu.ot import (
    as_rows,
    cosine_regulariser,
    euclidean_regulariser,
    manhattan_regulariser,
    random_projections,
    sorted_projection,
    sw_regulariser_sorted,
)

PLAIN = {
    "euclidean": euclidean_regulariser,
    "manhattan": manhattan_regulariser,
    "cosine": cosine_regulariser,
}

Gather = Callable[[Sequence[nn.Parameter]], AbstractContextManager]
AddGrad = Callable[[nn.Parameter, Tensor], None]


def projection_seed(seed: int, step: int, index: int) -> int:
    return (seed * 1_000_003 + step) * 100_003 + index


@dataclass
class ParameterRegulariser:
    kind: str
    """``wasserstein``, ``euclidean``, ``manhattan`` or ``cosine``."""
    weight: float
    pairs: list[tuple[nn.Parameter, nn.Parameter]]
    """(trainable tensor, its frozen θ₀ twin)."""
    gather: Gather
    add_grad: AddGrad
    n_projections: int = 100
    resample: bool = True
    seed: int = 0
    _w0_sorted: dict[int, Tensor] = field(default_factory=dict, init=False)

    def apply(self, step: int) -> float:
        """Add ``weight``·∇D to every tensor's gradient; return Σ D (unweighted)."""
        total = 0.0
        for index, (param, ref) in enumerate(self.pairs):
            cached = self._w0_sorted.get(index)
            with self.gather([param] if cached is not None else [param, ref]):
                w0 = ref.data.float() if cached is None else None
                value, grad = self._value_and_grad(index, step, param.data.float(), w0, cached)
            total += float(value)
            if self.weight:
                self.add_grad(param, grad.mul_(self.weight))
        return total

    def _value_and_grad(
        self, index: int, step: int, w: Tensor, w0: Tensor | None, cached: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Value and gradient from θ₀'s tensor ``w0``, or from its cached sort(W₀U)."""
        if self.kind != "wasserstein":
            assert w0 is not None
            return PLAIN[self.kind](w, w0)
        d = as_rows(w).shape[1]
        seed = projection_seed(self.seed, step if self.resample else 0, index)
        u = random_projections(d, self.n_projections, seed, w.device, torch.float32)
        if cached is None:
            assert w0 is not None
            cached = sorted_projection(w0, u)
            if not self.resample:
                self._w0_sorted[index] = cached
        return sw_regulariser_sorted(w, cached, u)
