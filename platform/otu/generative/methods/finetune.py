"""Baseline: fine-tune the original generator on retained-class images alone, with the pretraining
objective (Sinkhorn divergence); the forgotten class goes only because it is absent from the data."""

from __future__ import annotations

from otu.generative.methods.common import noise_stream, trainable_copy
from otu.generative.models import MLPGenerator
from otu.generative.prepare import Prepared
from otu.generative.pretrain import fit_sinkhorn
from otu.generative.spec import Finetune
from otu.registry import TOTAL_STEPS, Reporter
from otu.spec import Experiment


def run(exp: Experiment, prepared: Prepared, report: Reporter) -> MLPGenerator:
    m: Finetune = exp.method  # type: ignore[assignment]
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
        noise=noise_stream(exp.seed),
        on_step=lambda step, loss: report(
            step, {"sinkhorn_divergence": loss, TOTAL_STEPS: m.steps}, generator
        ),
    )
