"""Classifier unlearning metrics: accuracy, top-2 accuracy, loss-based MIA, forgetting score, NoMUS.

MIA (as in the NeurIPS 2023 unlearning challenge kit used by DLFD): per-sample cross-entropy losses
of forget samples (members, label 1) and unseen test samples (non-members, label 0), then a logistic
regression on the loss, scored by accuracy over a ``StratifiedShuffleSplit`` CV. Two protocols:

* ``balanced`` (otu's): members and non-members balanced per image class by subsampling (for each
  class c, min(#forget_c, #test_c) of each), the loss (or its log, ``feature="log_loss"``) standardised;
* ``authors`` (the DLFD code, evaluation/mia.py:48-75): every sample of both sets, the raw loss, no
  scaler. With unequal set sizes its chance level is the larger set's share, not ½.

``FS = |MIA − 0.5|`` and ``NoMUS = ½·(acc + 1 − 2·FS)``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F

from otu.classifiers.train import predict_logits
from otu.errors import RunFailed


def per_sample_losses(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Cross-entropy of each sample under ``model`` (eval mode)."""
    logits = predict_logits(model, images)
    return F.cross_entropy(logits, labels, reduction="none").numpy()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` largest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def balanced_members(
    member_classes: np.ndarray, nonmember_classes: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into members and non-members with equal counts in every image class."""
    rng = np.random.default_rng(seed)
    keep_m: list[np.ndarray] = []
    keep_n: list[np.ndarray] = []
    for c in np.intersect1d(member_classes, nonmember_classes):
        m = np.flatnonzero(member_classes == c)
        n = np.flatnonzero(nonmember_classes == c)
        size = min(len(m), len(n))
        keep_m.append(rng.choice(m, size, replace=False))
        keep_n.append(rng.choice(n, size, replace=False))
    return np.concatenate(keep_m), np.concatenate(keep_n)


def mia_accuracy(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    n_splits: int = 10,
    test_size: float = 0.1,
    seed: int = 0,
    feature: str = "loss",
    standardise: bool = True,
) -> float:
    """Mean CV accuracy of a logistic regression telling members (1) from non-members (0) by loss
    (``feature="loss"``) or log-loss (``"log_loss"``), standardised first unless ``standardise`` is
    false. For the balanced protocol the inputs are already balanced (see :func:`balanced_members`)."""
    x = np.concatenate([member_losses, nonmember_losses]).astype(np.float64)[:, None]
    if not np.isfinite(x).all():
        raise RunFailed("the model's per-sample losses hold NaN/inf: it diverged; a smaller method.lr usually helps")
    if feature == "log_loss":
        x = np.log(np.maximum(x, np.finfo(np.float64).tiny))
    y = np.concatenate([np.ones(len(member_losses)), np.zeros(len(nonmember_losses))])
    cv = StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    attack = make_pipeline(StandardScaler(), LogisticRegression()) if standardise else LogisticRegression()
    return float(cross_val_score(attack, x, y, cv=cv, scoring="accuracy").mean())


def forgetting_score(mia_acc: float) -> float:
    """FS = |MIA − 0.5|: 0 when the attacker cannot tell forget samples from unseen ones."""
    return abs(mia_acc - 0.5)


def nomus(test_acc: float, fs: float) -> float:
    """Normalised machine unlearning score ½·(acc + 1 − 2·FS), in [0, 1]."""
    return 0.5 * (test_acc + 1.0 - 2.0 * fs)


class MIAProbe:
    """The loss-based MIA between a fixed forget set and fixed unseen samples, for repeated
    measurement of models: ``protocol="balanced"`` class-balanced pairs, ``"authors"`` every sample
    (either way at most ``max_samples`` of each set, seeded)."""

    def __init__(
        self,
        forget: tuple[torch.Tensor, torch.Tensor],
        unseen: tuple[torch.Tensor, torch.Tensor],
        *,
        n_splits: int,
        test_size: float,
        feature: str,
        seed: int,
        protocol: str = "balanced",
        max_samples: int | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        if protocol == "balanced":
            keep_f, keep_u = balanced_members(forget[1].numpy(), unseen[1].numpy(), seed)
            if max_samples is not None and len(keep_f) > max_samples:
                pick = rng.choice(len(keep_f), max_samples, replace=False)
                keep_f, keep_u = keep_f[pick], keep_u[pick]  # pairs share a class: still balanced
        else:
            keep_f, keep_u = _at_most(len(forget[1]), max_samples, rng), _at_most(len(unseen[1]), max_samples, rng)
        self.forget = forget[0][keep_f], forget[1][keep_f]
        self.unseen = unseen[0][keep_u], unseen[1][keep_u]
        self.n_splits, self.test_size, self.feature, self.seed = n_splits, test_size, feature, seed
        self.standardise = protocol == "balanced"

    def __call__(self, model: nn.Module) -> float:
        """MIA accuracy of ``model``."""
        return mia_accuracy(
            per_sample_losses(model, *self.forget),
            per_sample_losses(model, *self.unseen),
            self.n_splits,
            self.test_size,
            self.seed,
            self.feature,
            self.standardise,
        )


def _at_most(n: int, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """All of ``range(n)``, or ``size`` of them drawn without replacement (sorted)."""
    return np.arange(n) if size is None or n <= size else np.sort(rng.choice(n, size, replace=False))


def classifier_metrics(
    model: nn.Module,
    test: tuple[torch.Tensor, torch.Tensor],
    probe: MIAProbe,
) -> dict[str, float]:
    """``test_acc``, ``top2_acc``, ``mia_acc``, ``forgetting_score``, ``nomus``."""
    logits = predict_logits(model, test[0])
    acc = topk_accuracy(logits, test[1], 1)
    mia = probe(model)
    fs = forgetting_score(mia)
    return {
        "test_acc": acc,
        "top2_acc": topk_accuracy(logits, test[1], 2),
        "mia_acc": mia,
        "forgetting_score": fs,
        "nomus": nomus(acc, fs),
    }
