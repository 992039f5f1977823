"""Fine-tuning baseline: continue training the original on the retain set with plain cross-entropy."""

from __future__ import annotations

from torch import nn

from otu.family import RunContext
from otu.tabular.methods.marginal import unlearn_points
from otu.tabular.networks import DigitsTask
from otu.tabular.spec import TabularJob


def run(job: TabularJob, prepared: DigitsTask, ctx: RunContext) -> nn.Module:
    return unlearn_points(job, prepared, ctx, mi=None)
