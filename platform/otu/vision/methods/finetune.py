"""Fine-tuning baseline: continue training the original with cross-entropy on the retain set."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from otu.registry import Reporter
from otu.spec import Experiment
from otu.vision.methods.common import batches, fresh_copy, sgd
from otu.vision.prepare import Prepared
from otu.vision.spec import Finetune


def run(exp: Experiment, prepared: Prepared, report: Reporter) -> nn.Module:
    spec: Finetune = exp.method  # type: ignore[assignment]
    model = fresh_copy(prepared.original)
    opt = sgd(model, spec)
    x, y = prepared.splits.part("retain")
    gen = torch.Generator().manual_seed(exp.seed)
    step = 0
    for _ in range(spec.epochs):
        for idx in batches(len(x), spec.batch_size, gen):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            report(step, {"loss_ce": loss.item()}, model)
            step += 1
    return model.eval()
