"""Shadow models of ``eval.membership`` for data-point unlearning on digits: the tabular family's
:class:`~otu.classifiers.membership.ShadowKit` (the spec's classifier, its training recipe, and the
method run on a shadow's original, forget and retain sets). The shadows and audits themselves are
family-neutral (:mod:`otu.classifiers.membership`); feature unlearning has none
(:func:`otu.tabular.spec.rules` refuses the attack for it)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from otu.classifiers import membership as shared
from otu.classifiers.membership import ShadowKit
from otu.classifiers.models import build_model
from otu.family import RunContext
from otu.tabular.networks import NUM_CLASSES, DigitsTask, cache_entry
from otu.tabular.spec import METHODS, TabularJob


def shadow_kit(job: TabularJob, task: DigitsTask, ctx: RunContext) -> ShadowKit:
    """The digits classifier (seeded), ``task.model``'s recipe, and ``job.method`` on ``task`` with a
    shadow's original, forget and retain sets; shadow originals are cached beside the task's entry
    (``tabular-<hash>``)."""
    splits, spec = task.splits, job.model

    def unlearn(original: nn.Module, forget: torch.Tensor, retain: torch.Tensor, seed: int) -> nn.Module:
        shadow = replace(task, splits=replace(splits, forget=forget, retain=retain), original=original)
        run_ctx = RunContext(seed=seed, compute=ctx.compute, cache_dir=ctx.cache_dir)
        return METHODS[job.method.name].load()(job, shadow, run_ctx).eval()

    new_model = shared.seeded(lambda: build_model(spec.arch, NUM_CLASSES))
    entry = cache_entry(job.data, job.model, ctx.seed, ctx.cache_dir)
    return ShadowKit(splits, task.original, new_model, shared.recipe_fit(splits, spec), unlearn, entry)


def train_shadow(job: TabularJob, task: DigitsTask, shadow: dict[str, Any], ctx: RunContext) -> dict[str, np.ndarray]:
    """One shadow of :func:`otu.classifiers.membership.shadow_tasks`."""
    return shared.train_shadow(shadow_kit(job, task, ctx), shadow)
