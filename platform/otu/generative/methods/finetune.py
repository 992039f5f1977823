"""Baseline: fine-tune the original generator on retained-class images alone, with the pretraining
objective (Sinkhorn divergence); the forgotten class goes only because it is absent from the data."""

from __future__ import annotations

from otu.classifiers.report import report_step
from otu.family import TOTAL_STEPS, RunContext
from otu.generative.methods.common import noise_stream, trainable_copy
from otu.generative.models import MLPGenerator
from otu.generative.prepare import Prepared
from otu.generative.pretrain import fit_sinkhorn
from otu.generative.spec import Finetune, GenerativeJob


def run(job: GenerativeJob, prepared: Prepared, ctx: RunContext) -> MLPGenerator:
    m: Finetune = job.method
    generator = trainable_copy(prepared.original)
    return fit_sinkhorn(
        generator,
        prepared.data.retained,
        steps=m.steps,
        lr=m.lr,
        batch_size=m.batch_size,
        blur=m.blur,
        scaling=m.scaling,
        betas=(m.beta1, m.beta2),
        noise=noise_stream(ctx.seed),
        on_step=lambda step, loss: report_step(
            ctx.reporter, step, {"sinkhorn_divergence": loss, TOTAL_STEPS: m.steps}, generator
        ),
    )
