"""Retrain baseline: a fresh model trained on the retain set with ``task.model``'s recipe."""

from __future__ import annotations

from torch import nn

from otu.family import RunContext
from otu.vision.prepare import Prepared, train_fresh
from otu.vision.spec import VisionJob


def run(job: VisionJob, prepared: Prepared, ctx: RunContext) -> nn.Module:
    return train_fresh(prepared, job.model, "retain")
