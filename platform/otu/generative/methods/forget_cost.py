"""Naive baseline: minimise E_z c(z, G(z)) — the UOT-Unlearn cost with no potential, i.e. without the
marginal term that asks the samples to look like retained-class data. Nothing stops the samples from
reaching a low forget cost off the data manifold (the collapse UOT-Unlearn avoids)."""

from __future__ import annotations

import torch

from otu.generative.methods.common import UnlearningCost, noise_stream, trainable_copy
from otu.generative.models import MLPGenerator
from otu.generative.prepare import Prepared
from otu.generative.spec import ForgetCost
from otu.registry import TOTAL_STEPS, Reporter
from otu.spec import Experiment


def run(exp: Experiment, prepared: Prepared, report: Reporter) -> MLPGenerator:
    m: ForgetCost = exp.method  # type: ignore[assignment]
    generator = trainable_copy(prepared.original)
    cost = UnlearningCost.of(prepared, m)
    noise = noise_stream(exp.seed)
    opt = torch.optim.Adam(generator.parameters(), lr=m.lr, betas=(m.beta1, m.beta2))
    for step in range(1, m.steps + 1):
        z = torch.randn(m.batch_size, generator.latent_dim, generator=noise)
        terms = cost(z, generator(z))
        loss = terms.total.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        report(step, {"generator_loss": float(loss.detach()), **terms.means(), TOTAL_STEPS: m.steps}, generator)
    return generator
