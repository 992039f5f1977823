r"""Metrics of a generator, read by the evaluator classifier on samples of one fixed noise batch.

* ``forget_share`` = N_k / N: share of samples classified as the forgotten class k;
* ``pul`` (percentage of unlearning) = (N_k(original) − N_k(G)) / N_k(original), on the same noise;
  NaN (undefined) when the original makes no sample of class k;
* ``ufid`` = Fréchet distance between Gaussians fitted to the evaluator's penultimate features of
  generated samples and of the real retained-class images,
  ‖m₁ − m₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}) — the squared Bures–Wasserstein
  distance between the two Gaussians (checked against POT's ``ot.gaussian.bures_wasserstein_distance``);
* ``mean_confidence``: mean max-softmax probability (samples collapsing into noise lower it);
* ``class_share_<c>``: the class histogram of the samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import nn

from otu.generative.models import MLPGenerator


@dataclass(frozen=True)
class Reference:
    """What every evaluation compares against."""

    noise: torch.Tensor
    """Fixed evaluation noise (``num_samples × latent_dim``)."""
    forget_class: int
    num_classes: int
    real_mean: np.ndarray
    real_cov: np.ndarray
    forget_before: int
    """Samples of the original generator classified as the forgotten class (PUL's N_before)."""


@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[np.ndarray, torch.Tensor]:
    """``(penultimate features as float64, softmax probabilities)`` of an ``otu.classifiers`` net
    (whose logits are ``head(features(x))``), in one pass."""
    model.eval()
    feats = torch.cat([model.features(chunk) for chunk in images.split(batch_size)])
    return feats.double().numpy(), model.head(feats).softmax(1)


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(m1: np.ndarray, c1: np.ndarray, m2: np.ndarray, c2: np.ndarray, eps: float = 1e-6) -> float:
    """FID formula (= W₂² between N(m1, c1) and N(m2, c2)), computed as pytorch-fid does: scipy's
    ``sqrtm(c1 c2)``, retried with ``eps·I`` added to both covariances when it is not finite (dead
    ReLU features make the covariances singular); the real part of the root is kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(c1 @ c2)
        if not np.isfinite(root).all():
            offset = np.eye(len(c1)) * eps
            root = scipy.linalg.sqrtm((c1 + offset) @ (c2 + offset))
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root.real))


def make_reference(
    original: MLPGenerator,
    evaluator: nn.Module,
    retained: torch.Tensor,
    noise: torch.Tensor,
    forget_class: int,
    num_classes: int,
) -> Reference:
    real_mean, real_cov = gaussian_stats(classify(evaluator, retained)[0])
    predicted = classify(evaluator, original.sample(noise))[1].argmax(1)
    return Reference(
        noise,
        forget_class,
        num_classes,
        real_mean,
        real_cov,
        int((predicted == forget_class).sum()),
    )


def pul(before: int, after: int) -> float:
    """(N_before − N_after)/N_before; NaN when N_before = 0 (nothing to unlearn: undefined)."""
    return (before - after) / before if before else float("nan")


def generator_metrics(generator: MLPGenerator, evaluator: nn.Module, ref: Reference) -> dict[str, float]:
    """``pul``, ``ufid``, ``forget_share``, ``mean_confidence``, ``class_share_<c>`` (module docstring)."""
    feats, probs = classify(evaluator, generator.sample(ref.noise))
    predicted = probs.argmax(1)
    shares = torch.bincount(predicted, minlength=ref.num_classes).double() / len(predicted)
    forget_after = int((predicted == ref.forget_class).sum())
    fid = frechet_distance(*gaussian_stats(feats), ref.real_mean, ref.real_cov)
    return {
        "pul": pul(ref.forget_before, forget_after),
        "ufid": fid,
        "forget_share": forget_after / len(predicted),
        "mean_confidence": float(probs.max(1).values.mean()),
        **{f"class_share_{c}": float(s) for c, s in enumerate(shares)},
    }
