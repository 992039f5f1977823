"""Feature unlearning by the W₂ barycenter of the group conditionals (Xu & Strohmer 2025).

With groups z of weight w_z = P(Z=z) and conditionals μ_z = P(X | Z=z), the barycenter is
ν = argmin_ν Σ_z w_z W₂²(μ_z, ν), and T_z is the optimal map pushing μ_z onto ν. The unlearned
features X̂ = T_Z(X) are independent of Z while moving X as little as possible; McCann's
interpolation x_t = (1−t)·x + t·T_z(x) traces the utility–leakage frontier from t=0 (x) to t=1.

* Gaussian: μ_z ≈ N(m_z, Σ_z); ν = N(m, Σ) with m = Σ_z w_z m_z and Σ the fixed point of
  Σ = Σ_z w_z (Σ^{1/2} Σ_z Σ^{1/2})^{1/2}; T_z(x) = m + A_z (x − m_z) with
  A_z = Σ_z^{-1/2} (Σ_z^{1/2} Σ Σ_z^{1/2})^{1/2} Σ_z^{-1/2}  (``ot.gaussian``).
* Empirical: ν is POT's free-support barycenter of the groups' training samples; T_z is the
  barycentric projection of the (exact or entropic) OT plan from μ_z to ν, extended to new points
  by ``ot.da`` (nearest training point's displacement for exact plans, the entropic map otherwise).

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


def group_weights(z: np.ndarray) -> np.ndarray:
    """w_z = P(Z=z), the empirical group proportions."""
    return np.bincount(z) / len(z)


def gaussian_barycenter(
    means: np.ndarray, covs: np.ndarray, weights: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the Bures–Wasserstein barycenter of N(means[k], covs[k]) (POT's
    fixed point, stopped when the Frobenius change is ≤ ``tol``)."""
    mean, cov = ot.gaussian.bures_wasserstein_barycenter(
        means, covs, weights=weights, num_iter=max_iter, eps=tol
    )
    return np.asarray(mean), np.asarray(cov)


def fit_gaussian(x: np.ndarray, z: np.ndarray, *, cov_reg: float, max_iter: int, tol: float) -> GaussianMaps:
    """Group means and (ridge-regularised, biased) covariances → barycenter → maps A_z, b_z."""
    groups = range(int(z.max()) + 1)
    eye = np.eye(x.shape[1])
    means = np.stack([x[z == g].mean(axis=0) for g in groups])
    covs = np.stack(
        [np.cov(x[z == g], rowvar=False, bias=True).reshape(eye.shape) + cov_reg * eye for g in groups]
    )
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
) -> EmpiricalMaps:
    """Free-support barycenter (support initialised at ``support_size`` random training rows)
    and one OT map per group onto it: exact (EMD) if ``entropic_reg`` is 0, else Sinkhorn."""
    groups = range(int(z.max()) + 1)
    samples = [x[z == g] for g in groups]
    rng = np.random.default_rng(seed)
    init = x[rng.choice(len(x), size=min(support_size, len(x)), replace=False)]
    uniform = [np.full(len(s), 1.0 / len(s)) for s in samples]
    support = ot.lp.free_support_barycenter(
        samples, uniform, init, weights=group_weights(z), numItermax=max_iter, stopThr=tol
    )
    transports = []
    for s in samples:
        if entropic_reg == 0:
            plan: ot.da.BaseTransport = ot.da.EMDTransport()
        else:
            plan = ot.da.SinkhornTransport(reg_e=entropic_reg)
        transports.append(plan.fit(Xs=s, Xt=support))
    return EmpiricalMaps(support=np.asarray(support), transports=tuple(transports))


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


def transport(
    source: Features, z_train: np.ndarray, z_test: np.ndarray, maps: GroupMaps, t: float
) -> Transported:
    """Apply the group maps to both splits."""
    return Transported(source, Features(maps(source.train, z_train), maps(source.test, z_test)), t)


def transport_cost(moved: Transported, z_train: np.ndarray) -> float:
    """Σ_z w_z E‖T_z(x) − x‖² on the training split: the barycenter objective the maps attain."""
    sq = ((moved.image.train - moved.source.train) ** 2).sum(axis=1)
    return float(sum(w * sq[z_train == g].mean() for g, w in enumerate(group_weights(z_train))))
