"""Data-point ("marginal") unlearning: CE(retain) + γ·Î(softmax outputs; Z) (Xu & Strohmer).

As in the authors' MNIST code, each step pairs a retain batch R with a forget batch F (an epoch
zips fresh shuffles of the two sets, so it ends with the shorter one) and labels the outputs on
R ∪ F (a batch of the full training set) Z = 0 and those on R (a retain batch) Z = 1; the loss is
CE on R plus γ·Î. Î → 0 when the outputs on the full training data are distributed as on the
retain data, i.e. the forget samples no longer have a marginal effect. Without forget data (the
fine-tuning baseline) an epoch is one pass over the retain set with plain CE.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from otu.classifiers.report import report_step
from otu.family import TOTAL_STEPS, Reporter, RunContext
from otu.tabular.mi import plugin_mi
from otu.tabular.networks import DigitsTask
from otu.tabular.spec import Marginal, TabularJob

CHECKPOINT_FILE = "model.pt"


def run(job: TabularJob, prepared: DigitsTask, ctx: RunContext) -> nn.Module:
    return unlearn_points(job, prepared, ctx, job.method)


def unlearn_points(job: TabularJob, task: DigitsTask, ctx: RunContext, mi: Marginal | None) -> nn.Module:
    """:func:`unlearn_marginal` on a copy of the original with ``job.method``'s training settings and
    ``mi``'s regulariser (None or γ = 0: fine-tuning on the retain set alone); the model is saved as
    ``ctx.checkpoint_dir/model.pt``."""
    splits = task.splits
    gamma = mi.gamma if mi is not None else 0.0
    forget = (splits.images[splits.forget], mi.forget_batch_size) if mi is not None and gamma > 0 else None
    model = unlearn_marginal(
        copy.deepcopy(task.original),
        (splits.images[splits.retain], splits.labels[splits.retain]),
        forget,
        gamma=gamma,
        epochs=job.method.epochs,
        lr=job.method.lr,
        batch_size=job.method.batch_size,
        seed=ctx.seed,
        reporter=ctx.reporter,
    )
    if ctx.checkpoint_dir is not None:
        ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), ctx.checkpoint_dir / CHECKPOINT_FILE)
    return model


def epoch_batches(
    n_retain: int, batch_size: int, forget: tuple[int, int] | None, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """One epoch of (retain indices, forget indices or None): seeded shuffles, batched and zipped
    (``forget`` = forget-set size, batch size; None pairs every retain batch with None)."""
    retain = torch.randperm(n_retain, generator=gen).split(batch_size)
    if forget is None:
        return zip(retain, [None] * len(retain), strict=True)
    n_forget, forget_batch_size = forget
    forget_batches = torch.randperm(n_forget, generator=gen).split(forget_batch_size)
    return zip(retain, forget_batches, strict=False)  # ends with the shorter, as the authors'


def unlearn_marginal(
    model: nn.Module,
    retain: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, int] | None,
    *,
    gamma: float,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    reporter: Reporter,
) -> nn.Module:
    """Adam on CE(retain) + γ·Î for ``epochs`` epochs (``retain`` = images, labels; ``forget`` =
    images, batch size, or None to fine-tune); reports the epoch means of ``ce``, ``mi`` and
    ``loss``. Returns ``model`` in eval mode."""
    images, labels = retain
    forget_images = forget[0] if forget is not None else None
    sizes = (len(forget[0]), forget[1]) if forget is not None else None
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(1, epochs + 1):
        sums, steps = torch.zeros(3), 0
        for idx, forget_idx in epoch_batches(len(images), batch_size, sizes, gen):
            x = images[idx]
            if forget_images is not None and forget_idx is not None:
                x = torch.cat([x, forget_images[forget_idx]])
            if len(x) < 2:  # a batch of one breaks BatchNorm statistics
                continue
            logits = model(x)
            retain_logits = logits[: len(idx)]
            ce = F.cross_entropy(retain_logits, labels[idx])
            mi = torch.zeros(())
            if forget_images is not None:
                probs = torch.cat([logits, retain_logits]).softmax(dim=1)
                z = torch.cat([torch.zeros(len(logits)), torch.ones(len(idx))]).long()
                mi = plugin_mi(probs, z)
            loss = ce + gamma * mi
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([ce.detach(), mi.detach(), loss.detach()])
            steps += 1
        ce_mean, mi_mean, loss_mean = (sums / max(steps, 1)).tolist()
        metrics = {"ce": ce_mean, "mi": mi_mean, "loss": loss_mean, TOTAL_STEPS: epochs}
        report_step(reporter, epoch, metrics, model)
    return model.eval()
