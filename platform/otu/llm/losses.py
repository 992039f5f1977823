r"""Per-sequence answer NLL and the losses the objectives (:mod:`otu.llm.objectives`) build on it.

With :math:`\ell_\theta(x, y)` the mean token NLL of answer y given question x (per sequence), every
term is by default a mean over sequences, so a global batch split across ranks (DeepSpeed averages
gradients) gives the same loss and gradient as one process on the whole batch. ``batch_mean`` (NPO's
``reduction``, the NLL terms' ``nll_reduction``) is instead one token mean over the micro-batch —
HF's causal-LM loss, which the OPT-OUT authors' trainer.py takes for every term — so it equals
theirs where the micro-batch is the step's batch (``workers × grad_accum = 1``).

* NPO (Zhang et al. 2024): :math:`-\frac{2}{\beta}\,\mathrm{mean}\log\sigma(\beta(\ell_\theta - \ell_{ref}))`
  — the sign makes the loss fall as the forget NLL rises above the reference's. What ℓ is, is the
  method's ``reduction``: ``sequence_sum`` (summed answer log-likelihood per sequence, the NPO
  paper and open-unlearning), ``sequence_mean`` (per-token mean per sequence), ``batch_mean`` (one
  token mean over the micro-batch, log σ taken once — the OPT-OUT authors' code).
* SimNPO (Fan et al. 2024, official code):
  :math:`-\frac{2}{\beta}\,\mathrm{mean}\log\sigma(\beta(\bar\ell_\theta - \gamma))`
  with :math:`\bar\ell` the per-token mean NLL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from otu.llm.text import IGNORE, Batch


def token_nll(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Per-token NLL (B×T−1, zero off the answer) and the answer mask."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    targets = batch.labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
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
    """One rank's micro-batches for a step."""

    forget: Batch
    retain: Batch
    world: Batch | None
    """None when the data has no world training set."""
    relabelled: Batch | None = None
    """The forget questions with the objective's own answers (:meth:`Objective.forget_answers`)."""


def npo_forget(model: nn.Module, ref: nn.Module | None, forget: Batch, beta: float, reduction: str) -> Tensor:
    """NPO's loss on the forget batch against the frozen reference ``ref``."""
    assert ref is not None, "NPO needs the reference model (needs_reference)"
    with torch.no_grad():
        ref_nll = reduced_nll(ref, forget, reduction)
    return npo_loss(reduced_nll(model, forget, reduction), ref_nll, beta)


def npo_loss(nll: Tensor, ref_nll: Tensor, beta: float) -> Tensor:
    """:math:`-\\frac{2}{\\beta}\\,\\mathrm{mean}\\log\\sigma(\\beta(\\ell_\\theta-\\ell_{ref}))`."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll)).mean()


def simnpo_loss(nll: Tensor, beta: float, gamma: float) -> Tensor:
    """:math:`-\\frac{2}{\\beta}\\,\\mathrm{mean}\\log\\sigma(\\beta(\\bar\\ell - \\gamma))` (official SimNPO code)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - gamma)).mean()
