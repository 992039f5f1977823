"""The vision family's shadow models for per-example membership inference (``eval.membership``): its
:class:`~otu.classifiers.membership.ShadowKit` (the spec's network, training recipe and method); the
shadows and audits themselves are family-neutral (:mod:`otu.classifiers.membership`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from otu.classifiers import membership as shared
from otu.classifiers.membership import ShadowKit
from otu.classifiers.membership import half_mask as half_mask  # tests draw the same halves
from otu.classifiers.models import build_model
from otu.family import RunContext
from otu.vision.prepare import Prepared
from otu.vision.spec import METHODS, VisionJob


def shadow_tasks(job: VisionJob) -> list[dict[str, Any]]:
    """The shadows ``job.eval.membership`` needs (:func:`otu.classifiers.membership.shadow_tasks`)."""
    return shared.shadow_tasks(job.eval.membership, job.method)


def shadow_kit(job: VisionJob, prepared: Prepared, ctx: RunContext) -> ShadowKit:
    """The spec's network (seeded), its training recipe, and ``job.method`` run on ``prepared`` with a
    shadow's original, forget and retain sets."""
    splits, spec = prepared.splits, job.model
    _, channels, height, _ = splits.images.shape

    new_model = shared.seeded(lambda: build_model(spec.arch, splits.num_classes, channels, height, spec.width))

    def unlearn(original: nn.Module, forget: torch.Tensor, retain: torch.Tensor, seed: int) -> nn.Module:
        shadow = replace(
            prepared,
            splits=replace(splits, forget=forget, retain=retain),
            original=original,
            new_model=lambda: new_model(seed),
            seed=seed,
        )
        run_ctx = RunContext(seed=seed, compute=ctx.compute, cache_dir=ctx.cache_dir)
        return METHODS[job.method.name].load()(job, shadow, run_ctx).eval()

    fit = shared.recipe_fit(splits, spec)
    return ShadowKit(splits, prepared.original, new_model, fit, unlearn, Path(prepared.cache_path))


def train_shadow(job: VisionJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext) -> dict[str, np.ndarray]:
    """One shadow of :func:`shadow_tasks` (:func:`otu.classifiers.membership.train_shadow`)."""
    return shared.train_shadow(shadow_kit(job, prepared, ctx), task)
