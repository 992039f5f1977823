r"""Sliced Wasserstein distance between two point clouds (differentiable, torch).

For samples ``x`` (n×d) with weights ``a`` and ``y`` (m×d) with weights ``b``, and L unit directions
``U = [u_1 … u_L]`` (d×L),

.. math::  SW_p(x, y) = \Big(\frac{1}{L}\sum_{l=1}^{L} W_p^p(u_l^\top x,\; u_l^\top y)\Big)^{1/p}

where :math:`W_p^p` is the 1-D optimal transport cost between the projected empirical measures —
the same quantity as POT's ``ot.sliced_wasserstein_distance(x, y, a, b, projections=U, p=p)``.
With uniform weights and n = m the 1-D cost is ``mean_i |sort(xU)_il − sort(yU)_il|^p`` (computed
here by one sort per cloud); otherwise POT's quantile-function solver ``ot.wasserstein_1d`` is used.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_projections(
    d: int,
    n: int,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` directions drawn uniformly on the unit sphere of R^d, as the columns of a d×n matrix.

    Normalised Gaussians drawn directly on ``device`` in ``dtype`` (no host draw, no copy) from a
    generator of that device seeded with ``seed`` (the global RNG when ``seed`` is None): a seed
    gives the same directions on every process of the same device type and dtype.
    """
    if d < 1 or n < 1:
        raise ValueError(f"random_projections needs d >= 1 and n >= 1, got d={d}, n={n}")
    device = torch.device("cpu" if device is None else device)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    u = torch.randn(d, n, generator=generator, dtype=dtype, device=device)
    return u.div_(torch.linalg.vector_norm(u, dim=0, keepdim=True))


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 50,
    p: float = 2,
    projections: Tensor | None = None,
    seed: int | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
) -> Tensor:
    r"""Monte-Carlo sliced Wasserstein distance :math:`SW_p(x, y)` (see the module docstring).

    Args:
        x, y: samples, shapes (n, d) and (m, d); gradients flow to both.
        n_projections: L, used only when ``projections`` is None.
        p: order of the distance (>= 1).
        projections: d×L unit-column directions; drawn by :func:`random_projections` with ``seed``
            (on x's device and dtype) when None.
        a, b: sample weights summing to 1 (uniform when None).

    Returns:
        A scalar tensor, :math:`(\frac{1}{L}\sum_l W_p^p)^{1/p}`.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d); got {tuple(x.shape)} and {tuple(y.shape)}")
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    if projections is None:
        projections = random_projections(x.shape[1], n_projections, seed, x.device, x.dtype)
    elif projections.ndim != 2 or projections.shape[0] != x.shape[1]:
        raise ValueError(f"projections must be (d, L) with d={x.shape[1]}; got {tuple(projections.shape)}")
    x_proj, y_proj = x @ projections, y @ projections
    if a is None and b is None and x.shape[0] == y.shape[0]:
        gap = torch.sort(x_proj, dim=0).values - torch.sort(y_proj, dim=0).values
        per_direction = gap.abs().pow(p).mean(dim=0)
    else:
        import ot  # POT, only for weighted or unequal clouds

        per_direction = ot.wasserstein_1d(x_proj, y_proj, a, b, p=p)
    return per_direction.mean().pow(1.0 / p)
