r"""U-LiRA (Hayes, Shumailov, Triantafillou, Khalifa, Papernot 2024, "Inexact unlearning needs more
careful evaluations", arXiv 2403.01218): the per-example unlearning membership attack, LiRA's Gaussian
likelihood-ratio test (Carlini et al. 2022) on the logit-scaled confidence of the true class

.. math:: \phi(x, y) = \log\frac{p_y}{1 - p_y} = z_y - \log\sum_{j \ne y} e^{z_j},

fitted per forget example on shadows that unlearned it and shadows that never saw it; a model M's
score on x is

.. math:: s_M(x) = \log \mathcal N(\phi_M(x); \mu_u, \sigma_u^2) - \log \mathcal N(\phi_M(x); \mu_r, \sigma_r^2)

(high: x looks unlearned, i.e. M still carries a trace of it). Family-agnostic numpy; the shadows
are a family's (:mod:`otu.vision.membership`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

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
