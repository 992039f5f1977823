r"""OPT-OUT's per-tensor distance to the initial parameters θ₀, with closed-form gradients.

A parameter tensor W is read as a point cloud: its rows are samples (a 1-D tensor is one sample of
dimension ``numel``; a k-D tensor, k > 2, has rows ``W[i].flatten()``). For the frozen initial
tensor W₀ and L unit directions U = [u_1 … u_L] (d×L), OPT-OUT's regulariser is (p = 2, rows summed,
no root)

.. math::  SW(W, W_0) = \frac{1}{L}\sum_{l=1}^{L}\sum_{i=1}^{n}
           \big(\mathrm{sort}(WU)_{il} - \mathrm{sort}(W_0U)_{il}\big)^2
           = n \cdot \texttt{ot.sliced\_wasserstein\_distance}(W, W_0, \texttt{projections}=U)^2 .

With P = WU and Q̃ = W₀U re-ordered so that row i of column l holds the value of sort(W₀U)_{·l}
whose rank equals the rank of P_il, SW = (1/L)‖P − Q̃‖² and (sort is piecewise a fixed permutation)

.. math::  \nabla_W SW = \frac{2}{L}\,(P - \tilde Q)\,U^\top ,

two matmuls and a sort, no autograd graph: it can be added to ``param.grad`` between backward and
the optimizer step (e.g. on a ZeRO-3 parameter gathered layer by layer). Only sort(W₀U) (n×L) is
needed from θ₀, so :func:`sorted_projection` may be computed once and cached; the step then costs
the floor of 4·n·d·L FLOPs plus one n×L sort. (W U = W₀U + (W − W₀)U saves nothing more for a dense
W − W₀: the second product costs the first's FLOPs.)

OPT-OUT's ablation replaces SW by plain distances between the flattened tensors w = vec W and
w₀ = vec W₀ (the paper names them Euclidean, Manhattan and cosine distance; read as the distances
themselves, not their squares — the authors' public code does not include the ablation):

* euclidean  ‖w − w₀‖₂,            ∇ = (w − w₀)/‖w − w₀‖₂  (0 at w = w₀)
* manhattan  ‖w − w₀‖₁,            ∇ = sign(w − w₀)
* cosine     1 − ⟨w, w₀⟩/(‖w‖‖w₀‖), ∇ = −(w₀/(‖w‖‖w₀‖) − cos · w/‖w‖²)

Every function returns ``(value, grad)`` computed under ``torch.no_grad``; ``grad`` has W's shape
and dtype. SW computes in the dtype of U; the others in float32 at least (bf16/fp16 are upcast).
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_rows(w: Tensor) -> Tensor:
    """The (n, d) sample view of a parameter: 1-D → one row; k-D → rows ``w[i].flatten()``."""
    return w.reshape(1, -1) if w.ndim == 1 else w.reshape(w.shape[0], -1)


def _check_projections(rows: Tensor, projections: Tensor) -> None:
    if projections.ndim != 2 or projections.shape[0] != rows.shape[1]:
        raise ValueError(
            f"projections must be (d, L) with d={rows.shape[1]} (the row size of the tensor); "
            f"got {tuple(projections.shape)}"
        )


@torch.no_grad()
def sorted_projection(w0: Tensor, projections: Tensor) -> Tensor:
    """sort(W₀U) along the rows, shape (n, L): all that SW needs from the frozen tensor W₀."""
    rows = as_rows(w0)
    _check_projections(rows, projections)
    return torch.sort(rows.to(projections.dtype) @ projections, dim=0).values


@torch.no_grad()
def sw_regulariser_sorted(
    w: Tensor,
    w0_sorted: Tensor,
    projections: Tensor,
    *,
    scale: float = 1.0,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """SW(W, W₀) and ``scale``·∇SW from a cached ``w0_sorted = sorted_projection(w0, projections)``.

    4·n·d·L FLOPs in two matmuls (P = WU, then (P − Q̃)Uᵀ) plus one sort of the n×L projections;
    ``scale``·2/L is folded into the n×L residual, so no n×d temporary exists besides the gradient.
    With ``out`` (W's shape, the projections' dtype) the gradient is accumulated into it by one
    ``addmm_`` (``out += scale·∇SW``) and ``out`` is returned as the gradient.
    """
    rows = as_rows(w)
    _check_projections(rows, projections)
    n_dirs = projections.shape[1]
    if w0_sorted.shape != (rows.shape[0], n_dirs):
        raise ValueError(f"w0_sorted must be (n, L) = {(rows.shape[0], n_dirs)}; got {tuple(w0_sorted.shape)}")
    proj = rows.to(projections.dtype) @ projections  # P = W U, (n, L)
    proj_sorted, rank = torch.sort(proj, dim=0)
    gap = proj_sorted.sub_(w0_sorted)  # (P − Q̃) with rows in sorted order
    flat_gap = gap.view(-1)
    value = torch.dot(flat_gap, flat_gap) / n_dirs
    residual = proj.scatter_(0, rank, gap.mul_(2.0 * scale / n_dirs))  # rows' own order, reuses P
    if out is not None and out.dtype == projections.dtype:
        as_rows(out).addmm_(residual, projections.T)
        return value, out
    grad = (residual @ projections.T).reshape(w.shape).to(w.dtype)
    return value, grad if out is None else out.add_(grad.to(out.dtype))


def sw_regulariser(w: Tensor, w0: Tensor, projections: Tensor) -> tuple[Tensor, Tensor]:
    """OPT-OUT's SW(W, W₀) (module docstring) and its closed-form gradient, without autograd."""
    return sw_regulariser_sorted(w, sorted_projection(w0, projections), projections)


def sw_regulariser_autograd(w: Tensor, w0: Tensor, projections: Tensor) -> Tensor:
    """The same SW(W, W₀) built as an autograd graph through ``torch.sort`` (reference/baseline)."""
    rows, rows0 = as_rows(w), as_rows(w0.detach())
    _check_projections(rows, projections)
    proj = torch.sort(rows.to(projections.dtype) @ projections, dim=0).values
    proj0 = torch.sort(rows0.to(projections.dtype) @ projections, dim=0).values
    return (proj - proj0).square().sum() / projections.shape[1]


def _flat_pair(w: Tensor, w0: Tensor) -> tuple[Tensor, Tensor]:
    if w.shape != w0.shape:
        raise ValueError(f"w and w0 must have the same shape; got {tuple(w.shape)} and {tuple(w0.shape)}")
    dtype = torch.promote_types(w.dtype, torch.float32)
    return w.reshape(-1).to(dtype), w0.reshape(-1).to(dtype)


@torch.no_grad()
def euclidean_regulariser(w: Tensor, w0: Tensor) -> tuple[Tensor, Tensor]:
    """‖vec W − vec W₀‖₂ and its gradient (W − W₀)/‖W − W₀‖₂ (zero where W = W₀)."""
    flat, flat0 = _flat_pair(w, w0)
    diff = flat - flat0
    norm = diff.norm()
    grad = diff.div_(norm.clamp_min(torch.finfo(diff.dtype).tiny))
    return norm, grad.reshape(w.shape).to(w.dtype)


@torch.no_grad()
def manhattan_regulariser(w: Tensor, w0: Tensor) -> tuple[Tensor, Tensor]:
    """‖vec W − vec W₀‖₁ and its (sub)gradient sign(W − W₀)."""
    flat, flat0 = _flat_pair(w, w0)
    diff = flat - flat0
    return diff.abs().sum(), diff.sign().reshape(w.shape).to(w.dtype)


@torch.no_grad()
def cosine_regulariser(w: Tensor, w0: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """1 − cos(vec W, vec W₀) and its gradient; norms are clamped below at ``eps``."""
    flat, flat0 = _flat_pair(w, w0)
    norm, norm0 = flat.norm().clamp_min(eps), flat0.norm().clamp_min(eps)
    cos = flat.dot(flat0) / (norm * norm0)
    grad = flat * (cos / norm.square()) - flat0 / (norm * norm0)
    return 1.0 - cos, grad.reshape(w.shape).to(w.dtype)
