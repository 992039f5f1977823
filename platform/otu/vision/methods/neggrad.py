"""NegGrad baseline: gradient ascent on the forget set's cross-entropy (as in the DLFD authors' code)."""

from __future__ import annotations

from torch import nn

from otu.registry import Reporter
from otu.spec import Experiment
from otu.vision.methods.common import cross_entropy_pass
from otu.vision.prepare import Prepared


def run(exp: Experiment, prepared: Prepared, report: Reporter) -> nn.Module:
    return cross_entropy_pass(
        exp, prepared, report, part="forget", sign=-1.0, metric="loss_forget_ce"
    )
