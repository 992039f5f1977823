"""Fine-tuning baseline: continue training the original with cross-entropy on the retain set."""

from __future__ import annotations

from torch import nn

from otu.family import RunContext
from otu.vision.methods.common import cross_entropy_pass
from otu.vision.prepare import Prepared
from otu.vision.spec import VisionJob


def run(job: VisionJob, prepared: Prepared, ctx: RunContext) -> nn.Module:
    return cross_entropy_pass(job, prepared, ctx, part="retain", sign=1.0, metric="loss_ce")
