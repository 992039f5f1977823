r"""DLFD — Distribution-Level Feature Distancing (Choi & Na 2024, arXiv 2409.14747).

One pass (``epochs``) over the retain set. For retain batch k of K (x, y), with a forget batch x_f
and λ_k = λ_start + (λ_end − λ_start)·k/(K−1), while the monitored forgetting score FS ≥ threshold:

.. math::  x^* \leftarrow \mathrm{clip}\Big(x^* + \alpha\,\mathrm{sign}\,\nabla_{x^*}\big[
           w_{ot}\,OT_\varepsilon(f(x^*), f(x_f)) - \lambda_k\,CE(\theta(x^*), y)\big]\Big)
           \quad (M \text{ times, from } x^* = x)

then one SGD step on CE(θ(x*), y). f = logits (or penultimate features), OT_ε = Sinkhorn cost with
uniform marginals (:func:`otu.ot.sinkhorn_loss`, cosine cost, ε = blur², p = 2, annealing ratio
``ot_scaling`` close enough to 1 that the gradient's sign matches a converged solve); f(x_f) is a
constant of the perturbation. The OT term is taken on the *perturbed* samples as in the paper (the
authors' code feeds clean ones, so their OT gradient never reaches x*). x* is clipped to the data's
pixel range, as the authors clamp to [0, 1]. Perturbation passes run in eval mode (BatchNorm
statistics untouched); the update in train mode.

Dynamic forgetting: every ``check_every`` batches FS = |MIA − 0.5| is re-measured with the evaluation
attack (:class:`otu.vision.metrics.MIAProbe`) on a fixed class-balanced subsample of at most
``monitor_samples`` forget and *validation* samples — a forward pass over them plus
``eval.mia_splits`` one-feature logistic regressions, tens of milliseconds. While FS < threshold a
batch is plain CE on clean retain samples (as in the authors' code, the switch is re-decided at every
check). The test split is never seen here: it is the final report's.

Selection (``select``): ``last`` returns the final model; ``best_val`` (the authors' rule) the one
with the best validation accuracy among the checks whose FS ≤ ``select_max_fs``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from otu.classifiers.report import report_step
from otu.classifiers.train import predict_logits
from otu.family import TOTAL_STEPS, RunContext
from otu.ot import sinkhorn_loss
from otu.vision.methods.common import batches, cycle_batches, fresh_copy, sgd
from otu.vision.metrics import MIAProbe, forgetting_score, topk_accuracy
from otu.vision.prepare import Prepared
from otu.vision.spec import DLFD, VisionJob


def run(job: VisionJob, prepared: Prepared, ctx: RunContext) -> nn.Module:
    spec: DLFD = job.method
    ev = job.eval
    splits = prepared.splits
    model = fresh_copy(prepared.original)
    opt = sgd(model, spec)
    x, y = splits.part("retain")
    xf, _ = splits.part("forget")
    lo, hi = splits.images.min().item(), splits.images.max().item()
    probe = MIAProbe(
        splits.part("forget"),
        splits.part("val"),
        n_splits=ev.mia_splits,
        test_size=ev.mia_test_size,
        feature=ev.mia_feature,
        seed=ctx.seed,
        max_samples=spec.monitor_samples,
    )
    gen = torch.Generator().manual_seed(ctx.seed)
    forget_batches = cycle_batches(len(xf), spec.batch_size, gen)
    passes = [batches(len(x), spec.batch_size, gen) for _ in range(spec.epochs)]
    last = max(sum(map(len, passes)) - 1, 1)  # λ reaches lambda_end at the last batch
    selector = Selector(spec, splits.part("val"))
    fs = forgetting_score(probe(model))
    step = 0
    for order in passes:
        for idx in order:
            lam = spec.lambda_start + (spec.lambda_end - spec.lambda_start) * step / last
            perturbing = fs >= spec.threshold
            metrics = {"lambda": lam, "forgetting_score": fs, "perturbed": float(perturbing), TOTAL_STEPS: last + 1}
            inputs = x[idx]
            if perturbing:
                xf_batch = xf[next(forget_batches)]
                inputs, metrics["loss_ot"] = perturb(model, inputs, y[idx], xf_batch, lam, spec, lo, hi)
            model.train()
            loss = F.cross_entropy(model(inputs), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            metrics["loss_ce"] = loss.item()
            report_step(ctx.reporter, step, metrics, model)
            step += 1
            if step % spec.check_every == 0:
                fs = forgetting_score(probe(model))
                selector.offer(model, fs)
    return selector.chosen(model).eval()


class Selector:
    """The authors' checkpoint rule: best validation accuracy among checks with FS ≤ a bound."""

    def __init__(self, spec: DLFD, val: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.active = spec.select == "best_val"
        self.max_fs = spec.threshold if spec.select_max_fs is None else spec.select_max_fs
        self.val = val
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None

    def offer(self, model: nn.Module, fs: float) -> None:
        if not self.active or fs > self.max_fs:
            return
        with torch.no_grad():
            acc = topk_accuracy(predict_logits(model, self.val[0]), self.val[1], 1)
        if self.best is None or acc > self.best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best = (acc, state)

    def chosen(self, model: nn.Module) -> nn.Module:
        """``model`` with the selected weights loaded (unchanged under ``last`` or with no candidate)."""
        if self.best is not None:
            model.load_state_dict(self.best[1])
        return model


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_forget: torch.Tensor,
    lam: float,
    spec: DLFD,
    lo: float,
    hi: float,
) -> tuple[torch.Tensor, float]:
    """M signed-gradient ascent steps of w_ot·OT(f(x*), f(x_f)) − λ·CE(θ(x*), y) on x*; returns x*
    and the OT term at the last step."""
    model.eval()
    with torch.no_grad():
        target = _features(model, x_forget, spec.features)[0]
    x_star = x.clone()
    ot = torch.zeros(())
    for _ in range(spec.perturb_steps):
        x_star.requires_grad_(True)
        feats, logits = _features(model, x_star, spec.features)
        ot = sinkhorn_loss(feats, target, blur=spec.ot_eps**0.5, cost=spec.ot_cost, p=2, scaling=spec.ot_scaling)
        objective = spec.ot_weight * ot - lam * F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(objective, x_star)
        x_star = (x_star.detach() + spec.alpha * grad.sign()).clamp_(lo, hi)
    return x_star, ot.item()


def _features(model: nn.Module, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(OT features, logits) of ``x``: the logits themselves or the penultimate features."""
    hidden = model.features(x)
    logits = model.head(hidden)
    return (logits if kind == "logits" else hidden), logits
