r"""Gradient ascent: :math:`-\ell_\theta(\text{forget})`."""

from __future__ import annotations

from otu.llm.objectives import Objective
from otu.llm.spec import GA


class GAObjective(Objective[GA]):
    def forget_term(self, model, ref, b):
        return -self.nll(model, b.forget)
