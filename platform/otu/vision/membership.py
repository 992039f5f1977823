r"""Per-example membership inference with shadow models (``eval.membership``): U-LiRA and the NeurIPS
2023 Machine Unlearning Challenge score. Plain numpy/PyTorch; the platform fans the shadows out.

Both attacks read the logit-scaled confidence of the true class y (LiRA, Carlini et al. 2022;
Hayes et al. 2024; the challenge's ``metric.py:29-61``):

.. math:: \phi(x, y) = \log\frac{p_y}{1 - p_y} = z_y - \log\sum_{j \ne y} e^{z_j}

**U-LiRA** (Hayes, Shumailov, Triantafillou, Khalifa, Papernot 2024, "Inexact unlearning needs more
careful evaluations", arXiv 2403.01218: its per-example U-MIA, LiRA's Gaussian likelihood-ratio
test adapted to unlearning). Shadow originals are trained on random halves D_k of the training set D
(here in complementary pairs drawn within F and within R, so every example is in exactly half of the
shadows and each shadow unlearns as many images), and each is unlearned with the audited method and
hyperparameters on the forget examples it holds, F ∩ D_k. For a forget example x the shadows that
held it give φ "unlearned" samples, the others φ "retrained" (never saw it) samples; a Gaussian is
fitted to each. A model M's score on x is the log likelihood ratio

.. math:: s_M(x) = \log \mathcal N(\phi_M(x); \mu_u, \sigma_u^2) - \log \mathcal N(\phi_M(x); \mu_r, \sigma_r^2)

(high: x looks unlearned, i.e. M still carries a trace of it). The attack is scored as a ROC of the
claim "M saw x and unlearned it" (M's scores on the forget set) against "never saw x" (each retrained
shadow's score on the same x, its Gaussian refitted without it): AUC, and TPR at 1 % and 0.1 % FPR
(the low-FPR reading LiRA and U-LiRA report). An oracle that never saw F lands near 0.5, a model that
kept F above it.

**Challenge score** (google-deepmind/unlearning_evaluation at ffae0ff, ``metric.py:165-349``,
``main.py:292-337``): N unlearned and N retrained models from the same original; per forget example the
ε of the best of two threshold families on φ at δ = 1e-5, a forgetting quality F from the ε histogram,
and the final score F · (RA_U / RA_R) · (TA_U / TA_R) with mean retain/test accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from otu.cache import cached_dir, content_hash
from otu.classifiers.models import build_model
from otu.classifiers.train import predict_logits, train_classifier
from otu.family import RunContext
from otu.vision.data import Splits
from otu.vision.prepare import Prepared
from otu.vision.spec import METHODS, VisionJob

DELTA = 1e-5
"""δ of the challenge's ε (metric.py:24)."""
EPSILON_CAP = 50.0
"""Largest ε the challenge reports (metric.py:25)."""
THRESHOLDS_PER_UNIT = 100
"""Threshold grid density of the challenge's attacks (metric.py:26)."""
BUFFER = 2.0
"""Margin of the double-threshold grid (metric.py:77)."""
MIN_SIGMA = 1e-6
"""Floor of a fitted standard deviation (φ of a confident model barely moves between shadows)."""


def logit_confidence(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """φ = z_y − logsumexp_{j≠y} z_j per row: log(p_y / (1 − p_y)) without forming p (the
    challenge's metric.py:29-61 does the same with a 1e-45 guard)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64)
    true = z.gather(1, y[:, None])[:, 0]
    others = z.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


# ---------------------------------------------------------------- U-LiRA


@dataclass(frozen=True)
class GaussianFits:
    """Per-example Gaussians of φ: under shadows that unlearned the example and under shadows that
    never saw it (arrays of shape [examples])."""

    mu_unlearned: np.ndarray
    sigma_unlearned: np.ndarray
    mu_retrained: np.ndarray
    sigma_retrained: np.ndarray


def _fit(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, floored) standard deviation over the models where ``mask`` holds, per
    example; ``phi`` and ``mask`` are [models, examples]."""
    count = mask.sum(axis=0)
    mu = np.where(mask, phi, 0.0).sum(axis=0) / count
    var = np.where(mask, (phi - mu) ** 2, 0.0).sum(axis=0) / (count - 1)
    return mu, np.maximum(np.sqrt(var), MIN_SIGMA)


def fit_gaussians(phi: np.ndarray, held: np.ndarray) -> GaussianFits:
    """U-LiRA's fits (Hayes et al. 2024, U-LiRA): ``phi[k, i]`` is shadow k's φ on forget example i
    after unlearning, ``held[k, i]`` whether shadow k was trained on it (and so unlearned it). Each
    example needs two shadows of each kind."""
    held = held.astype(bool)
    if min(held.sum(axis=0).min(), (~held).sum(axis=0).min()) < 2:
        raise ValueError("every example needs two shadows that held it and two that did not")
    return GaussianFits(*_fit(phi, held), *_fit(phi, ~held))


def likelihood_ratio(phi: np.ndarray, fits: GaussianFits) -> np.ndarray:
    """s = log N(φ; μ_u, σ_u²) − log N(φ; μ_r, σ_r²): the per-example U-LiRA score (high: unlearned)."""
    return norm.logpdf(phi, fits.mu_unlearned, fits.sigma_unlearned) - norm.logpdf(
        phi, fits.mu_retrained, fits.sigma_retrained
    )


def retrained_scores(phi: np.ndarray, held: np.ndarray, fits: GaussianFits) -> np.ndarray:
    """The negatives of the ROC: each shadow's score on each example it never saw, with the
    "retrained" Gaussian refitted without that shadow (leave-one-out; no model scores against a fit
    of itself). Needs three non-holding shadows per example; returns a flat array."""
    held = held.astype(bool)
    scores = []
    for k in range(phi.shape[0]):
        out = ~held[k]
        others = ~held & (np.arange(phi.shape[0]) != k)[:, None]
        mu, sigma = _fit(phi[:, out], others[:, out])
        loo = GaussianFits(fits.mu_unlearned[out], fits.sigma_unlearned[out], mu, sigma)
        scores.append(likelihood_ratio(phi[k, out], loo))
    return np.concatenate(scores)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR of a ROC point with FPR ≤ ``target`` (LiRA's low-FPR reading)."""
    return float(tpr[fpr <= target].max(initial=0.0))


def roc_summary(positives: np.ndarray, negatives: np.ndarray) -> dict[str, float]:
    """``ulira_auc``, ``ulira_tpr_at_1fpr``, ``ulira_tpr_at_0_1fpr`` of scores (positives: the
    audited model on its forget examples; negatives: never-saw-it shadows)."""
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    s = np.concatenate([positives, negatives])
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "ulira_auc": float(roc_auc_score(y, s)),
        "ulira_tpr_at_1fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "ulira_tpr_at_0_1fpr": tpr_at_fpr(fpr, tpr, 0.001),
    }


# ---------------------------------------------------------------- the challenge's ε and score


def _rates(pos_pp: np.ndarray, neg_pp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """tpr, fnr, fpr, tnr per threshold from [models, thresholds] predicted-positive indicators."""
    tpr, fpr = pos_pp.mean(axis=0), neg_pp.mean(axis=0)
    return tpr, 1.0 - tpr, fpr, 1.0 - fpr


def double_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, ...]:
    """metric.py:64-129: predict positive between two thresholds; "positive" is the peakier of the two
    sets; right thresholds span its range plus a buffer, left ones lie a width (its range) ± buffer
    below each."""
    pos_diff, neg_diff = np.ptp(pos), np.ptp(neg)
    width = neg_diff if pos_diff > neg_diff else pos_diff
    if pos_diff >= neg_diff:
        pos, neg = neg, pos
    low, high = pos.min() + width - BUFFER, pos.max() + BUFFER
    right = np.linspace(low, high, num=math.ceil((high - low) * THRESHOLDS_PER_UNIT))
    n_left = math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT)
    left = np.concatenate([np.linspace(r - width - BUFFER, r - width + BUFFER, num=n_left) for r in right])
    right = np.repeat(right, n_left)

    def predicted_positive(c: np.ndarray) -> np.ndarray:
        return (left[None, :] <= c[:, None]) & (c[:, None] <= right[None, :])

    return _rates(predicted_positive(pos), predicted_positive(neg))


def single_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, ...]:
    """metric.py:132-162: predict positive at or above one threshold, thresholds over both sets' range."""
    both = np.concatenate([pos, neg])
    low, high = both.min(), both.max()
    thresholds = np.linspace(low, high, math.ceil((high - low) * THRESHOLDS_PER_UNIT))
    return _rates(pos[:, None] >= thresholds[None, :], neg[:, None] >= thresholds[None, :])


def threshold_epsilons(rates: list[np.ndarray], delta: float) -> np.ndarray:
    """ε of each threshold from its ``[tpr, fnr, fpr, tnr]``, metric.py:220-283: inf where
    fpr = fnr = 0 (perfect separation), NaN (dropped by the caller) where only one of them is 0, else
    max(log(1−δ−fpr) − log fnr, log(1−δ−fnr) − log fpr) clipped below at 0."""
    tpr, fnr, fpr, tnr = rates
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.clip(np.fmax(np.log(1 - delta - fpr) - np.log(fnr), np.log(1 - delta - fnr) - np.log(fpr)), 0, None)
    eps = np.where(fpr * fnr == 0, np.nan, eps)
    return np.where((fpr + fnr == 0) & (tpr + tnr == 2), np.inf, eps)


def example_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float = DELTA) -> float:
    """One forget example's ε (metric.py:179-301) from φ under the positive and negative models: the
    cap when one set is far peakier than the other (range ratio < 1 %), else the largest ε over both
    threshold families, capped at :data:`EPSILON_CAP`."""
    pos_diff, neg_diff = np.ptp(pos), np.ptp(neg)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = min(pos_diff, neg_diff) / max(pos_diff, neg_diff)
    if ratio < 0.01:
        return EPSILON_CAP
    rates = [
        np.concatenate(r) for r in zip(double_threshold_rates(pos, neg), single_threshold_rates(pos, neg), strict=True)
    ]
    eps = threshold_epsilons(rates, delta)
    kept = eps[~np.isnan(eps)]
    if kept.size == 0:
        raise ValueError("every threshold gave a NaN ε")
    return float(np.clip(kept.max(), 0, EPSILON_CAP))


def epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Per-example ε from φ of N unlearned and N retrained models ([models, examples]); per example the
    positive set is the one with the larger median (metric.py:313-322)."""
    retrain_positive = np.median(retrained, axis=0) > np.median(unlearned, axis=0)
    pos = np.where(retrain_positive, retrained, unlearned)
    neg = np.where(retrain_positive, unlearned, retrained)
    return np.array([example_epsilon(pos[:, i], neg[:, i], delta) for i in range(pos.shape[1])])


def forget_quality(eps: np.ndarray, models: int) -> float:
    """F (metric.py:324-349): buckets of width 0.5 up to ⌈log(N − 1)⌉, worth 1, ½, ¼, … points; each
    example scores its bucket's points (0 beyond the last); F is the mean."""
    top = math.ceil(math.log(models - 1))
    starts = np.arange(0.0, top - 0.5 + 1e-12, 0.5)
    points = 0.5 ** np.arange(len(starts))
    total = 0.0
    for e in eps:
        hit = np.flatnonzero(e < starts + 0.5)
        total += points[hit[0]] if hit.size else 0.0
    return total / len(eps)


def challenge_metrics(
    unlearned_phi: np.ndarray,
    retrained_phi: np.ndarray,
    accuracies: dict[str, tuple[float, float]],
) -> tuple[dict[str, float], np.ndarray]:
    """``challenge_epsilon`` (mean per-example ε), ``challenge_forget_quality`` (F) and
    ``challenge_score`` = F · (RA_U / RA_R) · (TA_U / TA_R) (main.py:292-337), with ``accuracies``
    ``{"unlearned": (mean retain acc, mean test acc), "retrained": (...)}``; and the per-example ε."""
    eps = epsilons(unlearned_phi, retrained_phi)
    quality = forget_quality(eps, unlearned_phi.shape[0])
    (ra_u, ta_u), (ra_r, ta_r) = accuracies["unlearned"], accuracies["retrained"]
    score = quality * (ra_u / ra_r) * (ta_u / ta_r)
    return {"challenge_epsilon": float(eps.mean()), "challenge_forget_quality": quality, "challenge_score": score}, eps


# ---------------------------------------------------------------- shadows of the vision family


def shadow_tasks(job: VisionJob) -> list[dict[str, Any]]:
    """The shadows ``job.eval.membership`` needs: ``ulira`` — complementary pairs of halves, each
    trained and unlearned with ``job.method``; ``challenge`` — N runs of the method on the original, N
    retrained models (the reference) and N more (the oracle's own row)."""
    spec = job.eval.membership
    n, seed = spec.shadow_models, spec.seed
    method = job.method.model_dump(mode="json")
    if spec.attack == "ulira":
        pairs = [(j, side) for j in range(n // 2) for side in (0, 1)]
        return [{"kind": "half", "pair": j, "side": side, "seed": seed, "method": method} for j, side in pairs]
    if spec.attack == "challenge":
        unlearn = [{"kind": "unlearn", "index": i, "seed": seed, "method": method} for i in range(n)]
        sets = [(name, i) for name in ("reference", "control") for i in range(n)]
        retrain = [{"kind": "retrain", "set": name, "index": i, "seed": seed} for name, i in sets]
        return unlearn + retrain
    return []


def task_seed(task: dict[str, Any]) -> int:
    """A training seed drawn from the task's identity (not its method)."""
    return int(content_hash({k: v for k, v in task.items() if k != "method"}), 16) % 2**31


def half_mask(size: int, pair: int, side: int, seed: int, stream: int = 0) -> np.ndarray:
    """Membership of each of ``size`` examples in shadow (pair, side): a seeded random half for side 0,
    its complement for side 1 (every example in exactly one of the two); ``stream`` draws
    independent halves of different sets."""
    order = np.random.default_rng([seed, pair, stream]).permutation(size)
    held = np.zeros(size, dtype=bool)
    held[order[: size // 2]] = True
    return held if side == 0 else ~held


def _seeded_model(job: VisionJob, splits: Splits, seed: int) -> Callable[[], nn.Module]:
    _, channels, height, _ = splits.images.shape

    def new_model() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_model(job.model.arch, splits.num_classes, channels, height, job.model.width)

    return new_model


def _train(
    job: VisionJob, new_model: Callable[[], nn.Module], splits: Splits, idx: torch.Tensor, seed: int
) -> nn.Module:
    spec = job.model
    return train_classifier(
        new_model(), splits.images[idx], splits.labels[idx],
        epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, weight_decay=spec.weight_decay, seed=seed,
    )  # fmt: skip


def _unlearn(job: VisionJob, prepared: Prepared, ctx: RunContext, seed: int) -> nn.Module:
    run_ctx = RunContext(seed=seed, compute=ctx.compute, cache_dir=ctx.cache_dir)
    return METHODS[job.method.name].load()(job, replace(prepared, seed=seed), run_ctx).eval()


def _shadow_original(job: VisionJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext) -> Prepared:
    """The task with shadow (pair, side)'s half as its training set: the shadow original (trained on the
    half, cached beside the prepared models' folder: ``vision-<hash>-shadow-<hash>``) and F ∩ half /
    R ∩ half as its forget / retain sets. The halves are drawn within F and within R, so every shadow
    unlearns ⌊|F|/2⌋ or ⌈|F|/2⌉ images."""
    splits, seed = prepared.splits, task_seed(task)
    pair, side, half_seed = task["pair"], task["side"], task["seed"]
    forget = splits.forget[torch.from_numpy(half_mask(len(splits.forget), pair, side, half_seed, 0))]
    retain = splits.retain[torch.from_numpy(half_mask(len(splits.retain), pair, side, half_seed, 1))]
    train = torch.cat([forget, retain])
    new_model = _seeded_model(job, splits, seed)
    prepared_dir = Path(prepared.cache_path)  # beside it: a folder inside would fail its digest check
    name = f"{prepared_dir.name}-shadow-{content_hash({k: v for k, v in task.items() if k != 'method'})}"
    path = cached_dir(
        prepared_dir.parent / name,
        lambda tmp: torch.save(_train(job, new_model, splits, train, seed).state_dict(), tmp / "original.pt"),
    )
    original = new_model()
    original.load_state_dict(torch.load(path / "original.pt", weights_only=True))
    shadow_splits = replace(splits, forget=forget, retain=retain)
    return replace(prepared, splits=shadow_splits, original=original.eval(), new_model=new_model, seed=seed)


def forget_confidence(model: nn.Module, splits: Splits) -> np.ndarray:
    """φ of every forget image under ``model``, in ``splits.forget`` order."""
    images, labels = splits.part("forget")
    return logit_confidence(predict_logits(model, images), labels)


def _accuracy(model: nn.Module, splits: Splits, part: str) -> float:
    images, labels = splits.part(part)
    return float((predict_logits(model, images).argmax(dim=1) == labels).float().mean())


def train_shadow(job: VisionJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext) -> dict[str, np.ndarray]:
    """One shadow of :func:`shadow_tasks`: its φ on the (real) forget images, and per kind ``held``
    (ulira: which forget images its half held) or ``retain_acc``/``test_acc`` (challenge)."""
    splits, seed = prepared.splits, task_seed(task)
    if task["kind"] == "half":
        shadow = _shadow_original(job, prepared, task, ctx)
        model = _unlearn(job, shadow, ctx, seed)
        held = np.isin(splits.forget.numpy(), shadow.splits.forget.numpy())
        return {"phi": forget_confidence(model, splits), "held": held}
    if task["kind"] == "unlearn":
        model = _unlearn(job, prepared, ctx, seed)
    else:
        model = _train(job, _seeded_model(job, splits, seed), splits, splits.retain, seed)
    return {
        "phi": forget_confidence(model, splits),
        "retain_acc": np.array(_accuracy(model, splits, "retain")),
        "test_acc": np.array(_accuracy(model, splits, "test")),
    }


# ---------------------------------------------------------------- the audits


def ulira(
    models: Mapping[str, nn.Module], splits: Splits, shadows: list[dict[str, np.ndarray]]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """U-LiRA rows per model (:func:`roc_summary`), the per-forget-image table (Gaussian fits, each
    model's φ and score) and the ROC inputs (each model's scores and, as ``negatives``, the
    never-saw-it shadows')."""
    phi = np.stack([s["phi"] for s in shadows])
    held = np.stack([s["held"] for s in shadows])
    fits = fit_gaussians(phi, held)
    negatives = retrained_scores(phi, held, fits)
    table: dict[str, np.ndarray] = {
        "index": splits.forget.numpy(),
        "label": splits.labels[splits.forget].numpy(),
        "mu_unlearned": fits.mu_unlearned,
        "sigma_unlearned": fits.sigma_unlearned,
        "mu_retrained": fits.mu_retrained,
        "sigma_retrained": fits.sigma_retrained,
    }
    rows, scores = {}, {"negatives": negatives}
    for name, model in models.items():
        phi_m = forget_confidence(model, splits)
        scores[name] = likelihood_ratio(phi_m, fits)
        rows[name] = roc_summary(scores[name], negatives)
        table[f"phi_{name}"], table[f"score_{name}"] = phi_m, scores[name]
    return rows, table, scores


def challenge(
    models: Mapping[str, nn.Module], splits: Splits, tasks: list[dict[str, Any]], shadows: list[dict[str, np.ndarray]]
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Challenge rows per model and the per-forget-image ε table. The retrained reference is the
    ``reference`` set; ``unlearned`` is scored by the method's N runs on the original, ``retrained`` by
    the ``control`` set (retraining as the method), any other model by N copies of itself (a
    deterministic "method": the scorer's peaky-distribution rule gives it the ε cap)."""
    groups: dict[str, list[dict[str, np.ndarray]]] = {}
    for task, result in zip(tasks, shadows, strict=True):
        groups.setdefault("unlearned" if task["kind"] == "unlearn" else task["set"], []).append(result)
    groups["retrained"] = groups.pop("control")
    reference = groups.pop("reference")

    def summary(results: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, tuple[float, float]]:
        accs = (float(np.mean([r["retain_acc"] for r in results])), float(np.mean([r["test_acc"] for r in results])))
        return np.stack([r["phi"] for r in results]), accs

    ref_phi, ref_accs = summary(reference)
    rows, table = {}, {"index": splits.forget.numpy(), "label": splits.labels[splits.forget].numpy()}
    for name, model in models.items():
        if name in groups:
            phi, accs = summary(groups[name])
        else:
            phi = np.tile(forget_confidence(model, splits), (len(reference), 1))
            accs = (_accuracy(model, splits, "retain"), _accuracy(model, splits, "test"))
        rows[name], table[f"epsilon_{name}"] = challenge_metrics(
            phi, ref_phi, {"unlearned": accs, "retrained": ref_accs}
        )
    return rows, table
