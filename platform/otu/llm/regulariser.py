r"""OPT-OUT's parameter regulariser λ·Σ_tensors D(θ, θ₀), applied as a gradient between backward and step.

The work is shared across data-parallel ranks. The trainable tensors are cut into buckets of
consecutive tensors (at most ``bucket_numel`` elements, at least one tensor); within a bucket each
tensor gets one owner rank, largest first to the least-loaded rank (LPT), the cost of a tensor being
its n·d·L. Per bucket and step: one collective brings each owner the fp32 master weights of its
tensors (the optimizer's copy under bf16/ZeRO, not the low-precision module copy; under ZeRO-3 an
all-to-all of the partitions, so a rank receives only what it owns), each rank computes value and
closed-form gradient (:mod:`otu.ot`) of the tensors it owns, and one collective brings every rank
its partition's part of those gradients; the values are all-reduced once. θ₀ is the fp32 master
weights at construction (before the first step, so D = 0 at step 0 in every precision), kept by the
owner only: as sort(W₀U) when the projections are fixed, else as the fp32 tensor. Projections U are
drawn on the tensor's device in fp32 from a seed that depends on (run seed, step, tensor index)
only, so every rank — and a single process — uses the same directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

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


class Shards(Protocol):
    """An engine's view of its trainable tensors for the regulariser (collective on every rank).
    ``owners[k]`` is the rank that computes ``params[k]``; every rank passes the same lists."""

    rank: int
    world: int

    def fetch_owned(self, params: Sequence[nn.Parameter], owners: Sequence[int]) -> list[Tensor | None]:
        """The full fp32 master value (read-only) of each tensor this rank owns; None for the others."""
        ...

    def add_owned_grads(self, params: Sequence[nn.Parameter], owners: Sequence[int], grads: Sequence[Tensor]) -> None:
        """Add ``grads`` (fp32, full shape, one per tensor this rank owns, in order) to the
        gradients wherever they are kept: each rank receives its partition's part."""
        ...

    def all_sum(self, value: Tensor) -> float: ...


class Regulariser(Protocol):
    """A parameter regulariser: :meth:`apply` adds ``weight``·∇D to the gradients between backward
    and step and returns D (unweighted)."""

    weight: float

    def apply(self, step: int) -> float: ...


class LocalShards:
    """One process: the parameters are their own fp32 masters; gradients go to ``param.grad``."""

    rank, world = 0, 1

    def fetch_owned(self, params: Sequence[nn.Parameter], owners: Sequence[int]) -> list[Tensor | None]:
        return [p.data.float() for p in params]

    def add_owned_grads(self, params: Sequence[nn.Parameter], owners: Sequence[int], grads: Sequence[Tensor]) -> None:
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(g.to(p.grad.dtype))

    def all_sum(self, value: Tensor) -> float:
        return float(value)


def split_flat(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Views of ``flat`` with the given shapes, back to back."""
    sizes = [s.numel() for s in shapes]
    return [v.view(s) for v, s in zip(flat.split(sizes), shapes, strict=True)]


def plan_buckets(numels: Sequence[int], bucket_numel: int) -> list[list[int]]:
    """Consecutive tensor indices in buckets of at most ``bucket_numel`` elements (≥ 1 tensor each)."""
    buckets: list[list[int]] = []
    size = 0
    for i, n in enumerate(numels):
        if not buckets or size + n > bucket_numel:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += n
    return buckets


def balance(costs: Sequence[int], world: int) -> list[int]:
    """Owner rank of each task: largest cost first to the least-loaded rank (LPT, ≤ 4/3 of optimal)."""
    loads = [0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owners[i] = rank
        loads[rank] += costs[i]
    return owners


def projection_seed(seed: int, step: int, index: int) -> int:
    return (seed * 1_000_003 + step) * 100_003 + index


@dataclass
class ParameterRegulariser:
    kind: str
    """``wasserstein``, ``euclidean``, ``manhattan`` or ``cosine``."""
    weight: float
    params: list[nn.Parameter]
    """The trainable tensors, in the same order on every rank."""
    shards: Shards
    n_projections: int = 100
    resample: bool = True
    seed: int = 0
    bucket_numel: int = 50_000_000
    buckets: list[list[int]] = field(init=False)
    owner: dict[int, int] = field(init=False)
    _theta0: dict[int, Tensor] = field(default_factory=dict, init=False)

    @torch.no_grad()
    def __post_init__(self) -> None:
        numels = [getattr(p, "ds_numel", p.numel()) for p in self.params]  # full size under ZeRO-3
        self.buckets, self.owner = plan_buckets(numels, self.bucket_numel), {}
        for bucket in self.buckets:
            owners = balance([numels[i] * self.n_projections for i in bucket], self.shards.world)
            self.owner |= dict(zip(bucket, owners, strict=True))
        for bucket in self.buckets:  # θ₀: the fp32 masters before any step, on their owners only
            masters = self.shards.fetch_owned([self.params[i] for i in bucket], [self.owner[i] for i in bucket])
            for i, w0 in zip(bucket, masters, strict=True):
                if w0 is not None:
                    self._theta0[i] = self._reference(i, w0)

    def mine(self) -> list[int]:
        """Indices of the tensors this rank computes."""
        return sorted(i for i, r in self.owner.items() if r == self.shards.rank)

    @torch.no_grad()
    def apply(self, step: int) -> float:
        """Add ``weight``·∇D to every tensor's gradient; return Σ D (unweighted, over all ranks)."""
        total = torch.zeros((), dtype=torch.float64)
        for bucket in self.buckets:
            params, owners = [self.params[i] for i in bucket], [self.owner[i] for i in bucket]
            masters = self.shards.fetch_owned(params, owners)
            mine = [(i, w) for i, w in zip(bucket, masters, strict=True) if w is not None]
            flat = torch.zeros(sum(w.numel() for _, w in mine), dtype=torch.float32, device=params[0].device)
            grads = split_flat(flat, [w.shape for _, w in mine])
            for (i, w), grad in zip(mine, grads, strict=True):
                total += float(self._value_and_grad(i, step, w, grad))
            self.shards.add_owned_grads(params, owners, grads)
        return self.shards.all_sum(total)

    def _projections(self, index: int, step: int, w: Tensor) -> Tensor:
        seed = projection_seed(self.seed, step if self.resample else 0, index)
        return random_projections(as_rows(w).shape[1], self.n_projections, seed, w.device)

    def _reference(self, index: int, w0: Tensor) -> Tensor:
        """What is kept of θ₀: sort(W₀U) for fixed projections, else the fp32 tensor."""
        if self.kind == "wasserstein" and not self.resample:
            return sorted_projection(w0, self._projections(index, 0, w0))
        return w0.detach().clone()

    def _value_and_grad(self, index: int, step: int, w: Tensor, out: Tensor) -> Tensor:
        """D(W, W₀) of tensor ``index``; ``out += weight``·∇D."""
        ref = self._theta0[index]
        if self.kind != "wasserstein":
            value, grad = PLAIN[self.kind](w, ref)
            out.add_(grad, alpha=self.weight)
            return value
        u = self._projections(index, step, w)
        w0_sorted = ref if not self.resample else sorted_projection(ref, u)
        return sw_regulariser_sorted(w, w0_sorted, u, scale=self.weight, out=out)[0]
