r"""Per-sequence answer NLL and the unlearning objectives built on it.

With :math:`\ell_\theta(x, y)` the mean token NLL of answer y given question x (per sequence), every
term except NPO's ``batch_mean`` is a mean over sequences, so a global batch split across ranks
(DeepSpeed averages gradients) gives the same loss and gradient as one process on the whole batch;
``batch_mean`` is per micro-batch, as in the OPT-OUT authors' code.

* GA: :math:`-\ell_\theta(f)`;  GradDiff: GA + retain terms.
* NPO (Zhang et al. 2024): :math:`-\frac{2}{\beta}\,\mathrm{mean}\log\sigma(\beta(\ell_\theta - \ell_{ref}))`
  — the sign makes the loss fall as the forget NLL rises above the reference's. What ℓ is, is the
  method's ``reduction``: ``sequence_sum`` (summed answer log-likelihood per sequence, the NPO
  paper and open-unlearning), ``sequence_mean`` (per-token mean per sequence), ``batch_mean`` (one
  token mean over the micro-batch, log σ taken once — the OPT-OUT authors' code).
* SimNPO (Fan et al. 2024, official code): :math:`-c\,\frac{2}{\beta}\,\mathrm{mean}\log\sigma(\beta(\bar\ell_\theta - \gamma))`
  with :math:`\bar\ell` the per-token mean NLL and c the forget coefficient (``npo_coeff``).
* IDK: :math:`\ell_\theta` of forget questions paired with "I don't know"-style answers.
* retain terms: :math:`w_r\,\ell_\theta(\text{retain}) + w_w\,\ell_\theta(\text{world})`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otu.llm.text import IGNORE, Batch


def token_nll(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Per-token NLL (B×T−1, zero off the answer) and the answer mask."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    targets = batch.labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
    )
    return nll, targets != IGNORE


def sequence_nll(model: nn.Module, batch: Batch) -> Tensor:
    """Mean answer-token NLL of each sequence (B,)."""
    return reduced_nll(model, batch, "sequence_mean")


def reduced_nll(model: nn.Module, batch: Batch, reduction: str) -> Tensor:
    """Answer NLL per sequence (B,) — token mean or sum — or the batch's token mean (1,)."""
    nll, mask = token_nll(model, batch)
    if reduction == "sequence_sum":
        return nll.sum(1)
    if reduction == "batch_mean":
        return (nll.sum() / mask.sum().clamp(min=1)).reshape(1)
    return nll.sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class StepBatches:
    """One rank's micro-batches for a step (``idk`` replaces forget answers for the IDK method)."""

    forget: Batch
    retain: Batch
    world: Batch | None
    """None when the data has no world training set."""
    idk: Batch | None = None


class Objective(ABC):
    """Forget term (+ optional retain term) of one method; ``needs_reference`` → an NPO reference."""

    needs_reference = False

    def __init__(self, method) -> None:
        self.method = method

    @abstractmethod
    def forget_term(self, model: nn.Module, ref: nn.Module | None, b: StepBatches) -> Tensor:
        """The method's loss on the forget batch."""

    def retain_term(self, model: nn.Module, b: StepBatches) -> Tensor | None:
        weights = (
            getattr(self.method, "retain_weight", 0.0),
            getattr(self.method, "world_weight", 0.0),
        )
        total: Tensor | None = None
        for weight, batch in zip(weights, (b.retain, b.world), strict=True):
            if weight and batch is not None:
                term = weight * sequence_nll(model, batch).mean()
                total = term if total is None else total + term
        return total


class GradientAscent(Objective):
    def forget_term(self, model, ref, b):
        return -sequence_nll(model, b.forget).mean()


class NPOObjective(Objective):
    needs_reference = True

    def forget_term(self, model, ref, b):
        assert ref is not None
        reduction = self.method.reduction
        with torch.no_grad():
            ref_nll = reduced_nll(ref, b.forget, reduction)
        return npo_loss(reduced_nll(model, b.forget, reduction), ref_nll, self.method.beta)


class SimNPOObjective(Objective):
    def forget_term(self, model, ref, b):
        m = self.method
        return m.npo_coeff * simnpo_loss(sequence_nll(model, b.forget), m.beta, m.gamma)


class IDKObjective(Objective):
    def forget_term(self, model, ref, b):
        assert b.idk is not None
        return sequence_nll(model, b.idk).mean()


def npo_loss(nll: Tensor, ref_nll: Tensor, beta: float) -> Tensor:
    """:math:`-\\frac{2}{\\beta}\\,\\mathrm{mean}\\log\\sigma(\\beta(\\ell_\\theta-\\ell_{ref}))`."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll)).mean()


def simnpo_loss(nll: Tensor, beta: float, gamma: float) -> Tensor:
    """:math:`-\\frac{2}{\\beta}\\,\\mathrm{mean}\\log\\sigma(\\beta(\\bar\\ell - \\gamma))` (official SimNPO code)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - gamma)).mean()


OBJECTIVES: dict[str, type[Objective]] = {
    "ga": GradientAscent,
    "graddiff": GradientAscent,
    "npo": NPOObjective,
    "npo_rt": NPOObjective,
    "simnpo": SimNPOObjective,
    "idk": IDKObjective,
    "optout": NPOObjective,
}


def objective_for(method) -> Objective:
    return OBJECTIVES[method.name](method)
