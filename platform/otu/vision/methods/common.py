"""Pieces the unlearning loops share: the optimizer, seeded batches, a copy of the original."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from otu.classifiers.report import report_step
from otu.family import TOTAL_STEPS, RunContext
from otu.vision.prepare import Prepared
from otu.vision.spec import SGDMethod, VisionJob


def sgd(model: nn.Module, spec: SGDMethod) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


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


def cross_entropy_pass(
    job: VisionJob, prepared: Prepared, ctx: RunContext, part: str, sign: float, metric: str
) -> nn.Module:
    """``job.method.epochs`` seeded passes of SGD on ``sign``·CE over one split part of a copy of the
    original (sign +1: fine-tuning on ``retain``; −1: gradient ascent on ``forget``)."""
    spec: SGDMethod = job.method
    model = fresh_copy(prepared.original)
    opt = sgd(model, spec)
    x, y = prepared.splits.part(part)
    gen = torch.Generator().manual_seed(ctx.seed)
    passes = [batches(len(x), spec.batch_size, gen) for _ in range(spec.epochs)]  # gen draws nothing else
    total = sum(map(len, passes))
    step = 0
    for order in passes:
        for idx in order:
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            (sign * loss).backward()
            opt.step()
            report_step(ctx.reporter, step, {metric: loss.item(), TOTAL_STEPS: total}, model)
            step += 1
    return model.eval()
