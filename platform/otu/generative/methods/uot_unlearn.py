"""UOT-Unlearn: fine-tune the generator against a potential v with the UOT semi-dual
(:mod:`otu.generative.uot`) between noise and retained-class data under the unlearning cost
(:mod:`otu.generative.methods.common`). The forget cost pushes samples of the forgotten class away;
the τ-relaxed target marginal makes them land on retained-class data, spread over the nearby classes,
instead of on whatever fools the guide."""

from __future__ import annotations

import torch

from otu.classifiers.report import report_step
from otu.family import TOTAL_STEPS, RunContext
from otu.generative.methods.common import UnlearningCost, noise_stream, trainable_copy
from otu.generative.models import MLPGenerator, potential_network
from otu.generative.prepare import Prepared
from otu.generative.spec import GenerativeJob, UOTUnlearn
from otu.generative.uot import conjugate, generator_loss, potential_loss, r1_penalty


def run(job: GenerativeJob, prepared: Prepared, ctx: RunContext) -> MLPGenerator:
    m: UOTUnlearn = job.method
    generator = trainable_copy(prepared.original)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        potential = potential_network(prepared.data.image_shape, m.potential_hidden)
    psi = conjugate(m.divergence, m.tau)
    cost = UnlearningCost.of(prepared, m)
    target = prepared.data.retained
    noise = noise_stream(ctx.seed)
    opt_g = torch.optim.Adam(generator.parameters(), lr=m.lr, betas=(m.beta1, m.beta2))
    opt_v = torch.optim.Adam(potential.parameters(), lr=m.lr_potential, betas=(m.beta1, m.beta2))

    def draw() -> torch.Tensor:
        return torch.randn(m.batch_size, generator.latent_dim, generator=noise)

    for step in range(1, m.steps + 1):
        potential.requires_grad_(True)
        for _ in range(m.potential_steps):
            real = target[torch.randint(len(target), (m.batch_size,), generator=noise)]
            z = draw()
            with torch.no_grad():
                fake = generator(z)
                fake_cost = cost(z, fake).total
            v_real, r1 = r1_penalty(potential, real, m.r1_gamma)
            loss_v = potential_loss(psi, potential(fake), fake_cost, v_real)
            opt_v.zero_grad(set_to_none=True)
            (loss_v + r1).backward()
            opt_v.step()

        potential.requires_grad_(False)
        z = draw()
        fake = generator(z)
        terms = cost(z, fake)
        loss_g = generator_loss(terms.total, potential(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        report_step(
            ctx.reporter,
            step,
            {
                "potential_loss": float(loss_v.detach()),
                "r1_penalty": float(r1.detach()),
                "generator_loss": float(loss_g.detach()),
                **terms.means(),
                TOTAL_STEPS: m.steps,
            },
            generator,
        )
    return generator
