"""Pieces the unlearning loops share: the optimizer, seeded batches, a copy of the original."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from otu.vision.spec import SGDMethod


def sgd(model: nn.Module, spec: SGDMethod) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def fresh_copy(model: nn.Module) -> nn.Module:
    """A trainable deep copy (the cached reference model stays untouched)."""
    return copy.deepcopy(model).train()


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One seeded shuffled pass over ``range(n)`` in batches; a last batch of one joins the previous
    (BatchNorm needs two samples)."""
    parts = list(torch.randperm(n, generator=gen).split(batch_size))
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def cycle_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless seeded batches of ``min(batch_size, n)`` distinct indices of ``range(n)``."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]
