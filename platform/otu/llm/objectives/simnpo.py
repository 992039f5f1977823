r"""SimNPO (Fan et al. 2024, official code): :math:`c\cdot` :func:`~otu.llm.losses.simnpo_loss` of the
per-token mean forget NLL, c the forget coefficient (``npo_coeff``), + retain and world NLL."""

from __future__ import annotations

from otu.llm.losses import sequence_nll, simnpo_loss
from otu.llm.objectives import RetainingObjective
from otu.llm.spec import SimNPO


class SimNPOObjective(RetainingObjective[SimNPO]):
    def forget_term(self, model, ref, b):
        m = self.method
        return m.npo_coeff * simnpo_loss(sequence_nll(model, b.forget), m.beta, m.gamma)
