r"""The gradient-norm membership attack (Wang et al. 2024, arXiv 2402.17012; open-unlearning
src/evals/metrics/mia/gradnorm.py:13-37): a training member sits where the loss is flat, so its
gradient is small. Per item, with :math:`\ell = -\frac1{n}\sum_t \log p_t` over the answer tokens
without the final one (open-unlearning's ``tokenwise_logprobs``, src/evals/metrics/utils.py:129-131),

.. math:: g = \frac1{|\Theta|} \sum_{\theta \in \Theta} \lVert \nabla_\theta \ell \rVert_p,

the mean over parameter tensors of each gradient's p-norm (p = 2, configs/eval/tofu_metrics/
mia_gradnorm.yaml:8), one item at a time and in train mode, as there; the membership score is
:math:`-g`. A one-token answer keeps its token (open-unlearning's mean over no token is NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from otu.llm.text import IGNORE, Encoder


def grad_norms(
    model: nn.Module, encoder: Encoder, questions: Sequence[str], answers: Sequence[str], p: float = 2.0
) -> np.ndarray:
    """Per item, :math:`g` (module docstring); ``model``'s mode and ``requires_grad`` flags are restored."""
    params = list(model.parameters())
    flags, training = [q.requires_grad for q in params], model.training
    device = params[0].device
    out = []
    try:
        model.train()
        for q in params:
            q.requires_grad_(True)
        for question, answer in zip(questions, answers, strict=True):
            batch = encoder.batch([question], [answer]).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0, :-1].float()
            targets = batch.labels[0, 1:]
            scored = (targets != IGNORE).nonzero().squeeze(1)
            scored = scored[:-1] if len(scored) > 1 else scored  # without the EOS, unless it is all there is
            logp = torch.log_softmax(logits[scored], -1).gather(-1, targets[scored].unsqueeze(-1))
            grads = torch.autograd.grad(-logp.mean(), params, allow_unused=True)
            out.append(torch.stack([g.norm(p) for g in grads if g is not None]).mean().item())
    finally:
        model.train(training)
        for q, flag in zip(params, flags, strict=True):
            q.requires_grad_(flag)
    return np.array(out)
