r"""The NeurIPS 2023 Machine Unlearning Challenge score (google-deepmind/unlearning_evaluation at
ffae0ff, ``metric.py:165-349``, ``main.py:292-337``): from N unlearned and N retrained models of the
same original, per forget example the ε of the best of two threshold families on φ (the logit-scaled
confidence, :func:`otu.classifiers.ulira.logit_confidence`) at δ = 1e-5, a forgetting quality F from
the ε histogram, and the final score F · (RA_U / RA_R) · (TA_U / TA_R) with mean retain / test
accuracies. Family-agnostic numpy.
"""

from __future__ import annotations

import math

import numpy as np

DELTA = 1e-5
"""δ of the challenge's ε (metric.py:24)."""
EPSILON_CAP = 50.0
"""Largest ε the challenge reports (metric.py:25)."""
THRESHOLDS_PER_UNIT = 100
"""Threshold grid density of the challenge's attacks (metric.py:26)."""
BUFFER = 2.0
"""Margin of the double-threshold grid (metric.py:77)."""


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
