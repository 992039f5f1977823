"""Feature unlearning by the W₂ barycenter of the group conditionals (Xu & Strohmer 2025).

With groups z of weight w_z = P(Z=z) and conditionals μ_z = P(X | Z=z), the barycenter is
ν = argmin_ν Σ_z w_z W₂²(μ_z, ν), and T_z is the optimal map pushing μ_z onto ν. The unlearned
features X̂ = T_Z(X) are independent of Z while moving X as little as possible; McCann's
interpolation x_t = (1−t)·x + t·T_z(x) traces the utility–leakage frontier from t=0 (x) to t=1.

* Gaussian: μ_z ≈ N(m_z, Σ_z); ν = N(m, Σ) with m = Σ_z w_z m_z and Σ the fixed point of
  Σ = Σ_z w_z (Σ^{1/2} Σ_z Σ^{1/2})^{1/2}; T_z(x) = m + A_z (x − m_z) with
  A_z = Σ_z^{-1/2} (Σ_z^{1/2} Σ Σ_z^{1/2})^{1/2} Σ_z^{-1/2}  (``ot.gaussian``).
* Empirical, two groups: with π the (exact or entropic) OT plan between the groups' training
  samples, the barycenter is McCann's interpolation at the group weight,
  ν = Σ_ij π_ij δ(w_0 x_i + w_1 y_j) — for a Monge map T, T_0(x) = w_0 x + w_1 T(x) and
  T_1(y) = w_0 T⁻¹(y) + w_1 y. A point whose mass π splits follows one of its pairs, drawn ∝ π, so
  both groups' images have law ν exactly (:class:`PairMaps`). Every point keeps its own image —
  nothing is snapped to a small support.
* Empirical, more groups: ν is POT's free-support barycenter (``support_size`` atoms); T_z is the
  barycentric projection of the plan from μ_z to ν.

New points move like their nearest training point of the group (two groups), or through ``ot.da``
(nearest training point's displacement for exact plans, the entropic map otherwise).

Maps are fitted on the training split and applied to both splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import ot

from otu.tabular.tables import Features


class GroupMaps(Protocol):
    """Fitted maps T_z, one per group."""

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """T_{z_i}(x_i) for every row i."""


@dataclass(frozen=True)
class GaussianMaps:
    """Affine maps T_z(x) = x A_z + b_z to the Bures–Wasserstein barycenter N(mean, cov)."""

    mean: np.ndarray
    cov: np.ndarray
    linear: np.ndarray
    """``(groups, d, d)``: A_z (symmetric)."""
    offset: np.ndarray
    """``(groups, d)``: b_z = m − m_z A_z."""

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.einsum("nd,nde->ne", x, self.linear[z]) + self.offset[z]


@dataclass(frozen=True)
class EmpiricalMaps:
    """Per-group ``ot.da`` transports fitted from the group's training samples to the support of
    the free-support barycenter."""

    support: np.ndarray
    transports: tuple[ot.da.BaseTransport, ...]

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for group, transport in enumerate(self.transports):
            rows = z == group
            if rows.any():
                out[rows] = transport.transform(Xs=x[rows])
        return out


@dataclass(frozen=True)
class PairMaps:
    """Two groups: McCann's interpolation of the OT plan π between the groups' training samples.

    ν = Σ_ij π_ij δ(w_0 x_i + w_1 y_j) is the barycenter; a point is mapped along one of its pairs,
    drawn with probability ∝ its row (column) of π, so both groups' images follow ν exactly on the
    training split. A new point moves like its nearest training point of the same group:
    x ↦ x + w_1 (y_j − x_nn) (group 0), y ↦ y + w_0 (x_i − y_nn) (group 1).
    """

    weights: np.ndarray
    samples: tuple[np.ndarray, np.ndarray]
    plan: np.ndarray
    seed: int

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        from scipy.spatial import cKDTree

        rng = np.random.default_rng(self.seed)
        out = np.empty_like(x)
        for group in (0, 1):
            rows = np.flatnonzero(z == group)
            if not len(rows):
                continue
            own, other = self.samples[group], self.samples[1 - group]
            plan = self.plan if group == 0 else self.plan.T
            nearest = cKDTree(own).query(x[rows])[1]
            cdf = np.cumsum(plan[nearest], axis=1)
            partner = (cdf < rng.random(len(rows))[:, None] * cdf[:, -1:]).sum(axis=1)
            partner = np.minimum(partner, len(other) - 1)
            step = self.weights[1 - group] * (other[partner] - own[nearest])
            out[rows] = x[rows] + step
        return out


def group_weights(z: np.ndarray) -> np.ndarray:
    """w_z = P(Z=z), the empirical group proportions."""
    return np.bincount(z) / len(z)


def gaussian_barycenter(
    means: np.ndarray, covs: np.ndarray, weights: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the Bures–Wasserstein barycenter of N(means[k], covs[k]) (POT's
    fixed point, stopped when the Frobenius change is ≤ ``tol``)."""
    mean, cov = ot.gaussian.bures_wasserstein_barycenter(means, covs, weights=weights, num_iter=max_iter, eps=tol)
    return np.asarray(mean), np.asarray(cov)


def fit_gaussian(x: np.ndarray, z: np.ndarray, *, cov_reg: float, max_iter: int, tol: float) -> GaussianMaps:
    """Group means and (ridge-regularised, biased) covariances → barycenter → maps A_z, b_z."""
    groups = range(int(z.max()) + 1)
    eye = np.eye(x.shape[1])
    means = np.stack([x[z == g].mean(axis=0) for g in groups])
    covs = np.stack([np.cov(x[z == g], rowvar=False, bias=True).reshape(eye.shape) + cov_reg * eye for g in groups])
    mean, cov = gaussian_barycenter(means, covs, group_weights(z), max_iter=max_iter, tol=tol)
    maps = [ot.gaussian.bures_wasserstein_mapping(means[g], mean, covs[g], cov) for g in groups]
    return GaussianMaps(
        mean=mean,
        cov=cov,
        linear=np.stack([np.asarray(a) for a, _ in maps]),
        offset=np.stack([np.asarray(b).reshape(-1) for _, b in maps]),
    )


def fit_empirical(
    x: np.ndarray,
    z: np.ndarray,
    *,
    support_size: int,
    entropic_reg: float,
    max_iter: int,
    tol: float,
    seed: int,
) -> EmpiricalMaps | PairMaps:
    """Two groups: the OT map between them and McCann's interpolation (:class:`PairMaps`). More:
    a free-support barycenter (support initialised at ``support_size`` random training rows) and one
    OT map per group onto it. Plans are exact (EMD) if ``entropic_reg`` is 0, else Sinkhorn."""
    groups = range(int(z.max()) + 1)
    samples = [x[z == g] for g in groups]

    def fitted(source: np.ndarray, target: np.ndarray) -> ot.da.BaseTransport:
        if entropic_reg == 0:
            return ot.da.EMDTransport().fit(Xs=source, Xt=target)
        return ot.da.SinkhornTransport(reg_e=entropic_reg).fit(Xs=source, Xt=target)

    if len(samples) == 2:
        a, b = (np.full(len(s), 1.0 / len(s)) for s in samples)
        cost = ot.dist(samples[0], samples[1])
        if entropic_reg == 0:
            plan = ot.emd(a, b, cost, numItermax=max(100_000, 50 * len(a) * len(b)))
        else:
            plan = ot.sinkhorn(a, b, cost, entropic_reg, method="sinkhorn_log")
        return PairMaps(group_weights(z), (samples[0], samples[1]), np.asarray(plan), seed)
    rng = np.random.default_rng(seed)
    init = x[rng.choice(len(x), size=min(support_size, len(x)), replace=False)]
    uniform = [np.full(len(s), 1.0 / len(s)) for s in samples]
    support = ot.lp.free_support_barycenter(
        samples, uniform, init, weights=group_weights(z), numItermax=max_iter, stopThr=tol
    )
    transports = tuple(fitted(s, support) for s in samples)
    return EmpiricalMaps(support=np.asarray(support), transports=transports)


@dataclass(frozen=True)
class Transported:
    """Features x and their images T_z(x) on both splits; ``at(t)`` is McCann's interpolation."""

    source: Features
    image: Features
    t: float

    def at(self, t: float) -> Features:
        """x_t = (1−t)·x + t·T_z(x) on the train and test splits."""
        return Features(
            (1 - t) * self.source.train + t * self.image.train,
            (1 - t) * self.source.test + t * self.image.test,
        )

    @property
    def features(self) -> Features:
        return self.at(self.t)


def transport(source: Features, z_train: np.ndarray, z_test: np.ndarray, maps: GroupMaps, t: float) -> Transported:
    """Apply the group maps to both splits."""
    return Transported(source, Features(maps(source.train, z_train), maps(source.test, z_test)), t)


def transport_cost(moved: Transported, z_train: np.ndarray) -> float:
    """Σ_z w_z E‖T_z(x) − x‖² on the training split: the barycenter objective the maps attain."""
    sq = ((moved.image.train - moved.source.train) ** 2).sum(axis=1)
    return float(sum(w * sq[z_train == g].mean() for g, w in enumerate(group_weights(z_train))))
