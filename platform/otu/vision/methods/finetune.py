"""Fine-tuning baseline: continue training the original with cross-entropy on the retain set."""

from __future__ import annotations

from torch import nn

from otu.registry import Reporter
from otu.spec import Experiment
from otu.vision.methods.common import cross_entropy_pass
from otu.vision.prepare import Prepared


def run(exp: Experiment, prepared: Prepared, report: Reporter) -> nn.Module:
    return cross_entropy_pass(exp, prepared, report, part="retain", sign=1.0, metric="loss_ce")
