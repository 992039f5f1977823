"""Retrain baseline: a fresh model trained on the retain set with ``task.model``'s recipe."""

from __future__ import annotations

from torch import nn

from otu.registry import Reporter
from otu.spec import Experiment
from otu.vision.prepare import Prepared, train_fresh


def run(exp: Experiment, prepared: Prepared, report: Reporter) -> nn.Module:
    return train_fresh(prepared, exp.task.model, "retain", exp.seed)  # type: ignore[arg-type]
