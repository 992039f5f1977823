r"""GradDiff: gradient ascent on the forget set + NLL on retain and world."""

from __future__ import annotations

from otu.llm.objectives import RetainingObjective
from otu.llm.spec import GradDiff


class GradDiffObjective(RetainingObjective[GradDiff]):
    def forget_term(self, model, ref, b):
        return -self.nll(model, b.forget)
