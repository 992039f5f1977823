r"""IDK: :math:`\ell_\theta` of the forget questions paired with "I don't know"-style answers (item i
gets response i mod n), + retain and world NLL."""

from __future__ import annotations

from collections.abc import Sequence

from otu.llm.objectives import RetainingObjective
from otu.llm.spec import IDK


class IDKObjective(RetainingObjective[IDK]):
    def forget_term(self, model, ref, b):
        assert b.relabelled is not None
        return self.nll(model, b.relabelled)

    def forget_answers(self, indices: Sequence[int]) -> list[str]:
        responses = self.method.responses
        return [responses[i % len(responses)] for i in indices]
