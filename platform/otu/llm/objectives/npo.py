"""NPO against the frozen original model (:func:`otu.llm.losses.npo_forget`)."""

from __future__ import annotations

from otu.llm.losses import npo_forget
from otu.llm.objectives import Objective
from otu.llm.spec import NPO


class NPOObjective(Objective[NPO]):
    needs_reference = True

    def forget_term(self, model, ref, b):
        return npo_forget(model, ref, b.forget, self.method.beta, self.method.reduction or self.recipe.npo_reduction)
