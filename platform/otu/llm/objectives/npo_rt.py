"""NPO + NLL on retain and world."""

from __future__ import annotations

from otu.llm.losses import npo_forget
from otu.llm.objectives import RetainingObjective
from otu.llm.spec import NPORT


class NPORTObjective(RetainingObjective[NPORT]):
    needs_reference = True

    def forget_term(self, model, ref, b):
        return npo_forget(model, ref, b.forget, self.method.beta, self.method.reduction or self.recipe.npo_reduction)
