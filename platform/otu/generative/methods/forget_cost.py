"""Naive baseline: minimise E_z c(z, G(z)) — the UOT-Unlearn cost with no potential, i.e. without the
marginal term that asks the samples to look like retained-class data. Nothing stops the samples from
reaching a low forget cost off the data manifold (the collapse UOT-Unlearn avoids)."""

from __future__ import annotations

import torch

from otu.classifiers.report import report_step
from otu.family import TOTAL_STEPS, RunContext
from otu.generative.methods.common import UnlearningCost, noise_stream, trainable_copy
from otu.generative.models import MLPGenerator
from otu.generative.prepare import Prepared
from otu.generative.spec import ForgetCost, GenerativeJob


def run(job: GenerativeJob, prepared: Prepared, ctx: RunContext) -> MLPGenerator:
    m: ForgetCost = job.method
    generator = trainable_copy(prepared.original)
    cost = UnlearningCost.of(prepared, m)
    noise = noise_stream(ctx.seed)
    opt = torch.optim.Adam(generator.parameters(), lr=m.lr, betas=(m.beta1, m.beta2))
    for step in range(1, m.steps + 1):
        z = torch.randn(m.batch_size, generator.latent_dim, generator=noise)
        terms = cost(z, generator(z))
        loss = terms.total.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metrics = {"generator_loss": float(loss.detach()), **terms.means(), TOTAL_STEPS: m.steps}
        report_step(ctx.reporter, step, metrics, generator)
    return generator
