r"""DLFD — Distribution-Level Feature Distancing (Choi & Na 2024, arXiv 2409.14747).

One pass (``epochs``) over the retain set. For retain batch k of K (x, y), with a forget batch x_f
and λ_k = λ_start + (λ_end − λ_start)·k/(K−1), while the monitored forgetting score FS ≥ threshold:

.. math::  x^* \leftarrow \mathrm{clip}\Big(x^* + \alpha\,\mathrm{sign}\,\nabla_{x^*}\big[
           w_{ot}\,\langle T^\varepsilon, C\rangle\big(f(x^*), f(x_f)\big) - \lambda_k\,CE(\theta(x^*), y)\big]\Big)
           \quad (M \text{ times, from } x^* = x)

then one SGD step on CE(θ(x*), y). f = logits (or penultimate features); ⟨T^ε, C⟩ is the transport
cost of the Sinkhorn plan between the two feature batches — uniform marginals, cosine cost, ε = 0.01:
the paper's OT term and the authors' ``compute_ot_loss`` (unlearn/dlfd.py:19-23), not the entropic
value ⟨T, C⟩ + ε·KL — differentiated through the plan (:func:`otu.ot.sinkhorn_cost`). Dynamic
forgetting: while FS < threshold a batch is plain CE on clean retain samples (re-decided at every
check). The monitor reads forget vs *validation* samples; the test split is the final report's.

``protocol`` picks the reading (file:line refer to github.com/Dasol-Choi/DLFD):

* ``paper`` — the formula as the paper states it: OT on the *perturbed* samples against f(x_f), a
  constant of the perturbation; x* clipped to the data's pixel range at every step; perturbation in
  eval mode (BatchNorm statistics untouched), the update in train mode; seeded shuffled batches, the
  forget batches cycling over full batches; FS every ``check_every`` batches by the evaluation attack
  (``eval.mia_*``) on a fixed class-balanced subsample of ≤ ``monitor_samples`` forget and validation
  samples; the last model returned (``select`` ``last``).
* ``authors`` — their ``train_dlfd`` (unlearn/dlfd.py:67-146) as it runs:

  - retain and forget batches in data order (the loaders it is given have ``shuffle=False``,
    MUFAC_loader.py:89-93, RAF_loader.py:69-70); the forget loader restarts when exhausted, its short
    last batch included (dlfd.py:83-87);
  - a retain batch beside a forget batch of another size is skipped — no step, no check — while λ's
    batch index still advances (dlfd.py:77, 89-92);
  - the first batch perturbs unmeasured (their score starts at 3, dlfd.py:75);
  - noise accumulates from 0 and the input is clamp(x + noise, 0, 1) (dlfd.py:95-99, 112, 116-117).
    Their images are normalised first (ImageNet statistics for MUFAC, MUFAC_loader.py:59; 0.5/0.5 for
    RAF-DB, RAF_loader.py:28), so the clamp zeroes every below-mean pixel: give ``task.data``'s
    ``normalize_mean``/``normalize_std`` to reproduce that on image files. On digits (raw pixels in
    [0, 1], no normalisation) [0, 1] is just the pixel range, as under ``paper``;
  - the OT term is on the clean retain samples (dlfd.py:102-106): constant in the noise, so x* follows
    −λ_k·CE alone (at λ_k = 0 it stays at x). Its forward passes still run each step (they move
    BatchNorm statistics in train mode); the value is reported as ``loss_ot``;
  - the model's mode is never set: train for the first processed batch (its perturbation passes
    included), eval from the first monitor on — their accuracy and MIA call ``model.eval()``
    (evaluation/accuracy.py:7, evaluation/mia.py:13) and nothing calls ``train()`` again;
  - the monitor after every processed batch (``check_every`` 1, dlfd.py:135-137) is their MIA
    (``mia_protocol`` ``authors``: every forget and validation sample, raw loss, no balancing, no
    scaler; evaluation/mia.py:48-75);
  - ``select`` defaults to ``best_val`` (dlfd.py:142-145).

Selection (``select``): ``last`` returns the final model; ``best_val`` (the authors' rule) the one
with the best validation accuracy among the checks whose FS ≤ ``select_max_fs``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from otu.classifiers.report import report_step
from otu.classifiers.train import predict_logits
from otu.family import TOTAL_STEPS, RunContext
from otu.ot import sinkhorn_cost
from otu.vision.data import Splits
from otu.vision.methods.common import batches, cycle_batches, fresh_copy, sgd
from otu.vision.metrics import MIAProbe, forgetting_score, topk_accuracy
from otu.vision.prepare import Prepared
from otu.vision.spec import DLFD, VisionJob

Perturb = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, float, DLFD, tuple[float, float]], tuple[torch.Tensor, float]
]


def run(job: VisionJob, prepared: Prepared, ctx: RunContext) -> nn.Module:
    spec: DLFD = job.method
    authors = spec.protocol == "authors"
    splits = prepared.splits
    model = fresh_copy(prepared.original)
    opt = sgd(model, spec)
    x, y = splits.part("retain")
    xf, _ = splits.part("forget")
    probe = monitor(job, splits, ctx.seed)
    passes, forget_batches = batch_order(spec, len(x), len(xf), torch.Generator().manual_seed(ctx.seed))
    last = max(sum(map(len, passes)) - 1, 1)  # λ reaches lambda_end at the last batch
    selector = Selector(spec, splits.part("val"))
    perturb = PERTURB[spec.protocol]
    bounds = (0.0, 1.0) if authors else (splits.images.min().item(), splits.images.max().item())
    fs = None if authors else forgetting_score(probe(model))  # None: perturb, as their initial score 3
    done = 0
    for step, idx in enumerate(itertools.chain.from_iterable(passes)):
        lam = spec.lambda_start + (spec.lambda_end - spec.lambda_start) * step / last
        metrics = {"lambda": lam, TOTAL_STEPS: last + 1}
        xf_idx = next(forget_batches)
        if authors and len(xf_idx) != len(idx):
            report_step(ctx.reporter, step, {**metrics, "skipped": 1.0}, model)
            continue
        perturbing = fs is None or fs >= spec.threshold
        metrics["perturbed"] = float(perturbing)
        if fs is not None:
            metrics["forgetting_score"] = fs
        inputs = x[idx]
        if perturbing:
            inputs, metrics["loss_ot"] = perturb(model, inputs, y[idx], xf[xf_idx], lam, spec, bounds)
        if not authors:
            model.train()
        loss = F.cross_entropy(model(inputs), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metrics["loss_ce"] = loss.item()
        report_step(ctx.reporter, step, metrics, model)
        done += 1
        if done % spec.check_every == 0:
            fs = forgetting_score(probe(model))  # leaves the model in eval mode (authors: for good)
            selector.offer(model, fs)
    return selector.chosen(model).eval()


def batch_order(
    spec: DLFD, n_retain: int, n_forget: int, gen: torch.Generator
) -> tuple[list[list[torch.Tensor]], Iterator[torch.Tensor]]:
    """Retain batches of each pass and the endless forget batches: seeded shuffles with full forget
    batches (paper), or data order with the forget set's short last batch (authors)."""
    if spec.protocol == "authors":
        order = [list(torch.arange(n_retain).split(spec.batch_size)) for _ in range(spec.epochs)]
        return order, itertools.cycle(torch.arange(n_forget).split(spec.batch_size))
    forget = cycle_batches(n_forget, spec.batch_size, gen)
    return [batches(n_retain, spec.batch_size, gen) for _ in range(spec.epochs)], forget


def monitor(job: VisionJob, splits: Splits, seed: int) -> MIAProbe:
    """The forgetting-score monitor, forget vs validation: the evaluation attack on ≤ ``monitor_samples``
    of each (paper), or the authors' attack on every sample (authors)."""
    spec: DLFD = job.method
    ev = job.eval
    authors = spec.protocol == "authors"
    return MIAProbe(
        splits.part("forget"),
        splits.part("val"),
        n_splits=ev.mia_splits,
        test_size=ev.mia_test_size,
        feature="loss" if authors else ev.mia_feature,
        seed=seed,
        protocol="authors" if authors else ev.mia_protocol,
        max_samples=None if authors else spec.monitor_samples,
    )


class Selector:
    """The authors' checkpoint rule: best validation accuracy among checks with FS ≤ a bound."""

    def __init__(self, spec: DLFD, val: tuple[torch.Tensor, torch.Tensor]) -> None:
        rule = spec.select or ("best_val" if spec.protocol == "authors" else "last")
        self.active = rule == "best_val"
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
    bounds: tuple[float, float],
) -> tuple[torch.Tensor, float]:
    """The paper's perturbation: M signed-gradient ascent steps of w_ot·⟨T, C⟩(f(x*), f(x_f)) −
    λ·CE(θ(x*), y) on x*, eval mode, x* clipped to ``bounds`` each step; returns x* and the OT term at
    the last step."""
    model.eval()
    with torch.no_grad():
        target = _features(model, x_forget, spec.features)[0]
    x_star = x.clone()
    ot = torch.zeros(())
    for _ in range(spec.perturb_steps):
        x_star.requires_grad_(True)
        feats, logits = _features(model, x_star, spec.features)
        ot = _ot(feats, target, spec)
        objective = spec.ot_weight * ot - lam * F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(objective, x_star)
        x_star = (x_star.detach() + spec.alpha * grad.sign()).clamp_(*bounds)
    return x_star, ot.item()


def perturb_clean_ot(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_forget: torch.Tensor,
    lam: float,
    spec: DLFD,
    bounds: tuple[float, float],
) -> tuple[torch.Tensor, float]:
    """The authors' perturbation (unlearn/dlfd.py:95-117), in whatever mode the model is: noise δ from
    0, M steps δ ← δ + α·sign ∇_δ[w_ot·⟨T, C⟩(f(x), f(x_f)) − λ·CE(θ(clamp(x + δ)), y)] — the OT term
    on clean x, so only −λ·CE moves δ; returns clamp(x + δ) and the OT term at the last step. Each
    step runs their three forward passes in their order: perturbed, forget, clean."""
    noise = torch.zeros_like(x)
    feats = target = torch.zeros(())
    for _ in range(spec.perturb_steps):
        noise.requires_grad_(True)
        logits = model((x + noise).clamp(*bounds))
        with torch.no_grad():  # OT(clean, forget): no path to the noise
            target = _features(model, x_forget, spec.features)[0]
            feats = _features(model, x, spec.features)[0]
        (grad,) = torch.autograd.grad(-lam * F.cross_entropy(logits, y), noise)
        noise = noise.detach() + spec.alpha * grad.sign()
    with torch.no_grad():
        ot = _ot(feats, target, spec)
    return (x + noise).clamp(*bounds), ot.item()


PERTURB: dict[str, Perturb] = {"paper": perturb, "authors": perturb_clean_ot}


def _ot(a: torch.Tensor, b: torch.Tensor, spec: DLFD) -> torch.Tensor:
    return sinkhorn_cost(a, b, eps=spec.ot_eps, cost=spec.ot_cost, max_iter=spec.ot_max_iter, tol=spec.ot_tol)


def _features(model: nn.Module, x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(OT features, logits) of ``x``: the logits themselves or the penultimate features."""
    hidden = model.features(x)
    logits = model.head(hidden)
    return (logits if kind == "logits" else hidden), logits
