"""OT primitives shared by the families (plain PyTorch, checked against POT).

* :mod:`otu.ot.sliced` — sliced Wasserstein distance, random unit projections.
* :mod:`otu.ot.regularisers` — OPT-OUT's per-tensor SW distance to θ₀ (and the Euclidean,
  Manhattan and cosine ablations) with closed-form gradients.
* :mod:`otu.ot.sinkhorn` — the Sinkhorn plan's transport cost (DLFD) and the entropic OT cost
  (geomloss) between feature batches.

Unbalanced OT and Gaussian (Bures) barycenters need no wrapper: families call POT directly —
``ot.unbalanced.sinkhorn_unbalanced2``, ``ot.gaussian.bures_wasserstein_barycenter``,
``ot.gaussian.bures_wasserstein_mapping``.
"""

from otu.ot.regularisers import (
    as_rows,
    cosine_regulariser,
    euclidean_regulariser,
    manhattan_regulariser,
    sorted_projection,
    sw_regulariser,
    sw_regulariser_autograd,
    sw_regulariser_sorted,
)
from otu.ot.sliced import random_projections, sliced_wasserstein

SINKHORN = ("COSTS", "cosine_cost", "sinkhorn_cost", "sinkhorn_loss", "sinkhorn_plan", "sqeuclidean_cost")


def __getattr__(name: str):
    """The Sinkhorn names load geomloss on first use, so the SW regulariser needs only torch."""
    if name in SINKHORN:
        from otu.ot import sinkhorn

        return getattr(sinkhorn, name)
    raise AttributeError(f"module 'otu.ot' has no attribute {name!r}")


__all__ = [
    "COSTS",
    "as_rows",
    "cosine_cost",
    "cosine_regulariser",
    "euclidean_regulariser",
    "manhattan_regulariser",
    "random_projections",
    "sinkhorn_cost",
    "sinkhorn_loss",
    "sinkhorn_plan",
    "sliced_wasserstein",
    "sorted_projection",
    "sqeuclidean_cost",
    "sw_regulariser",
    "sw_regulariser_autograd",
    "sw_regulariser_sorted",
]
