"""otu.ot against POT: sliced Wasserstein, OPT-OUT regularisers (closed form vs autograd), Sinkhorn (the plan's
transport cost against POT and finite differences; the entropic cost against POT)."""

from __future__ import annotations

import ot
import pytest
import torch

from otu.ot import (
    COSTS,
    cosine_regulariser,
    euclidean_regulariser,
    manhattan_regulariser,
    random_projections,
    sinkhorn_cost,
    sinkhorn_loss,
    sinkhorn_plan,
    sliced_wasserstein,
    sorted_projection,
    sw_regulariser,
    sw_regulariser_autograd,
    sw_regulariser_sorted,
)

F64 = torch.float64


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------- projections, sliced Wasserstein


def test_random_projections_unit_columns_and_seeded() -> None:
    u = random_projections(7, 30, seed=3, dtype=F64)
    assert u.shape == (7, 30)
    torch.testing.assert_close(u.norm(dim=0), torch.ones(30, dtype=F64))
    torch.testing.assert_close(random_projections(7, 30, seed=3, dtype=F64), u)  # same seed
    assert not torch.allclose(random_projections(7, 30, seed=4, dtype=F64), u)
    u32 = random_projections(7, 30, seed=3)  # drawn in the working dtype itself
    assert u32.dtype == torch.float32
    torch.testing.assert_close(u32.norm(dim=0), torch.ones(30))


@pytest.mark.parametrize("p", [1, 2, 3])
def test_sliced_wasserstein_equals_pot_same_projections(p: int) -> None:
    x, y = randn(60, 5, seed=0), randn(60, 5, seed=1) * 1.5 + 0.7
    u = random_projections(5, 40, seed=2, dtype=F64)
    ours = sliced_wasserstein(x, y, p=p, projections=u)
    torch.testing.assert_close(ours, ot.sliced_wasserstein_distance(x, y, projections=u, p=p))


def test_sliced_wasserstein_weighted_and_unequal_sizes_equal_pot() -> None:
    x, y = randn(50, 4, seed=0), randn(35, 4, seed=1) + 1.0
    a = torch.rand(50, generator=torch.Generator().manual_seed(5), dtype=F64)
    a /= a.sum()
    u = random_projections(4, 25, seed=6, dtype=F64)
    torch.testing.assert_close(
        sliced_wasserstein(x, y, projections=u, a=a),
        ot.sliced_wasserstein_distance(x, y, a=a, projections=u),
    )
    torch.testing.assert_close(
        sliced_wasserstein(x, y, projections=u), ot.sliced_wasserstein_distance(x, y, projections=u)
    )


def test_sliced_wasserstein_seed_draws_random_projections_and_is_differentiable() -> None:
    x, y = randn(30, 6, seed=0).requires_grad_(True), randn(30, 6, seed=1)
    ours = sliced_wasserstein(x, y, n_projections=20, seed=9)
    u = random_projections(6, 20, seed=9, dtype=F64)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = ot.sliced_wasserstein_distance(x_ref, y, projections=u)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_sliced_wasserstein_rejects_mismatched_dims() -> None:
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        sliced_wasserstein(randn(5, 3, seed=0), randn(5, 4, seed=1))


# ---------------------------------------------------------------- OPT-OUT SW regulariser


@pytest.mark.parametrize("shape", [(40, 16), (24,), (6, 3, 4)], ids=["matrix", "vector", "3d"])
def test_sw_regulariser_value_is_n_times_pot_squared(shape: tuple[int, ...]) -> None:
    w, w0 = randn(*shape, seed=0), randn(*shape, seed=1) * 0.5
    rows = w.reshape(1, -1) if w.ndim == 1 else w.reshape(w.shape[0], -1)
    rows0 = w0.reshape(rows.shape)
    u = random_projections(rows.shape[1], 100, seed=2, dtype=F64)
    value, grad = sw_regulariser(w, w0, u)
    pot = ot.sliced_wasserstein_distance(rows, rows0, projections=u, p=2) ** 2 * rows.shape[0]
    torch.testing.assert_close(value, pot)
    assert grad.shape == w.shape and grad.dtype == w.dtype


@pytest.mark.parametrize("shape", [(40, 16), (24,), (6, 3, 4)], ids=["matrix", "vector", "3d"])
def test_sw_regulariser_closed_form_gradient_equals_autograd(shape: tuple[int, ...]) -> None:
    w, w0 = randn(*shape, seed=3), randn(*shape, seed=4)
    d = w.numel() if w.ndim == 1 else w[0].numel()
    u = random_projections(d, 100, seed=5, dtype=F64)
    value, grad = sw_regulariser(w, w0, u)
    w_auto = w.clone().requires_grad_(True)
    auto = sw_regulariser_autograd(w_auto, w0, u)
    (auto_grad,) = torch.autograd.grad(auto, w_auto)
    torch.testing.assert_close(value, auto.detach())
    torch.testing.assert_close(grad, auto_grad)


def test_sw_regulariser_cached_reference_and_row_order_invariance() -> None:
    w0 = randn(32, 8, seed=6)
    u = random_projections(8, 50, seed=7, dtype=F64)
    w = w0[torch.randperm(32, generator=torch.Generator().manual_seed(8))]
    value, grad = sw_regulariser(w, w0, u)  # same rows, other order: SW sees the same cloud
    assert value.abs() < 1e-10 and grad.abs().max() < 1e-10
    moved = w0 + 0.1 * randn(32, 8, seed=9)
    cached = sw_regulariser_sorted(moved, sorted_projection(w0, u), u)
    direct = sw_regulariser(moved, w0, u)
    assert cached[0] > 0
    torch.testing.assert_close(cached, direct)


def test_sw_regulariser_scaled_gradient_accumulates_into_out() -> None:
    w, w0 = randn(24, 6, seed=20), randn(24, 6, seed=21)
    u = random_projections(6, 40, seed=22, dtype=F64)
    value, grad = sw_regulariser(w, w0, u)
    out = torch.ones_like(w)
    got_value, got = sw_regulariser_sorted(w, sorted_projection(w0, u), u, scale=0.3, out=out)
    assert got is out
    torch.testing.assert_close(got_value, value)
    torch.testing.assert_close(out, 1 + 0.3 * grad)


def test_sw_regulariser_gradient_descent_pulls_rows_towards_initial_cloud() -> None:
    w, w0 = randn(20, 10, seed=10), randn(20, 10, seed=11)
    u = random_projections(10, 100, seed=12, dtype=F64)
    before, _ = sw_regulariser(w, w0, u)
    for _ in range(20):
        w = w - 2.0 * sw_regulariser(w, w0, u)[1]  # step ≈ 1/(Hessian scale 2/d)
    assert sw_regulariser(w, w0, u)[0] < 0.5 * before


def test_sw_regulariser_float32_projections_on_bf16_weights() -> None:
    w, w0 = randn(16, 8, seed=13).bfloat16(), randn(16, 8, seed=14).bfloat16()
    u = random_projections(8, 30, seed=15)
    value, grad = sw_regulariser(w, w0, u)
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    ref = sw_regulariser(w.double(), w0.double(), u.double())[0]
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=1e-6)


def test_sw_regulariser_rejects_wrong_projection_size() -> None:
    with pytest.raises(ValueError, match="d=8"):
        sw_regulariser(randn(4, 8, seed=0), randn(4, 8, seed=1), random_projections(5, 10))


# ---------------------------------------------------------------- ablation distances


def _euclidean(w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    return (w - w0).norm()


def _manhattan(w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    return (w - w0).abs().sum()


def _cosine(w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(w.flatten(), w0.flatten(), dim=0)


@pytest.mark.parametrize(
    ("closed_form", "plain"),
    [
        (euclidean_regulariser, _euclidean),
        (manhattan_regulariser, _manhattan),
        (cosine_regulariser, _cosine),
    ],
    ids=["euclidean", "manhattan", "cosine"],
)
@pytest.mark.parametrize("shape", [(12, 7), (30,)], ids=["matrix", "vector"])
def test_ablation_distances_closed_form_equals_autograd(closed_form, plain, shape) -> None:
    w, w0 = randn(*shape, seed=20), randn(*shape, seed=21)
    value, grad = closed_form(w, w0)
    w_auto = w.clone().requires_grad_(True)
    ref = plain(w_auto, w0)
    (ref_grad,) = torch.autograd.grad(ref, w_auto)
    torch.testing.assert_close(value, ref.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_euclidean_regulariser_at_initial_point_is_zero_not_nan() -> None:
    w0 = randn(5, 5, seed=22)
    value, grad = euclidean_regulariser(w0.clone(), w0)
    assert value == 0 and torch.equal(grad, torch.zeros_like(w0))


# ---------------------------------------------------------------- Sinkhorn loss vs POT


def _pot_reference(x: torch.Tensor, y: torch.Tensor, cost: str, eps: float):
    """POT's converged plan, sinkhorn2 value and KL(plan | a⊗b) for the same cost matrix."""
    metric = "sqeuclidean" if cost == "sqeuclidean" else "cosine"
    m = torch.as_tensor(ot.dist(x.numpy(), y.numpy(), metric=metric))
    a = torch.full((x.shape[0],), 1 / x.shape[0], dtype=F64)
    b = torch.full((y.shape[0],), 1 / y.shape[0], dtype=F64)
    kw = {"reg": eps, "method": "sinkhorn_log", "numItermax": 20000, "stopThr": 1e-12}
    plan = ot.sinkhorn(a, b, m, **kw)
    linear = ot.sinkhorn2(a, b, m, **kw)
    kl = (plan * (plan / (a[:, None] * b[None, :])).log()).sum()
    return plan, linear, kl


@pytest.mark.parametrize(("cost", "blur"), [("sqeuclidean", 0.5), ("cosine", 0.1)])
def test_sinkhorn_loss_equals_pot_plus_entropic_term(cost: str, blur: float) -> None:
    x, y = randn(40, 6, seed=30), randn(30, 6, seed=31) * 0.8 + 0.3
    eps = blur**2
    plan, linear, kl = _pot_reference(x, y, cost, eps)
    # Envelope gradient of OT_eps at POT's plan: d/dx <plan, C(x, y)>.
    x_ref = x.clone().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad((plan * COSTS[cost](x_ref[None], y[None])[0]).sum(), x_ref)

    x_fine = x.clone().requires_grad_(True)
    fine = sinkhorn_loss(x_fine, y, blur=blur, cost=cost, scaling=0.999)
    (fine_grad,) = torch.autograd.grad(fine, x_fine)
    torch.testing.assert_close(fine.detach(), linear + eps * kl, rtol=3e-4, atol=0)
    assert (fine - linear).abs() > 10 * (fine - linear - eps * kl).abs()  # the KL term is real
    assert (fine_grad - ref_grad).norm() < 0.05 * ref_grad.norm()

    x_def = x.clone().requires_grad_(True)
    default = sinkhorn_loss(x_def, y, blur=blur, cost=cost)  # scaling 0.9: annealing error
    (def_grad,) = torch.autograd.grad(default, x_def)
    torch.testing.assert_close(default.detach(), linear + eps * kl, rtol=3e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(def_grad.flatten(), ref_grad.flatten(), dim=0) > 0.9


def test_sinkhorn_loss_grads_both_inputs_and_debiased_is_zero_on_same_cloud() -> None:
    x = randn(25, 4, seed=32).float().requires_grad_(True)
    y = (randn(25, 4, seed=33) + 2).float().requires_grad_(True)
    sinkhorn_loss(x, y, blur=0.1, cost="cosine").backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    same = randn(25, 4, seed=34)
    assert sinkhorn_loss(same, same, blur=0.3, debias=True).abs() < 1e-6
    assert sinkhorn_loss(same, same, blur=0.3) > 1e-2


def test_sinkhorn_loss_rejects_unknown_cost() -> None:
    with pytest.raises(ValueError, match="'euclid'"):
        sinkhorn_loss(randn(3, 2, seed=0), randn(3, 2, seed=1), cost="euclid")  # type: ignore[arg-type]


# ---------------------------------------------------------------- Sinkhorn plan transport cost (DLFD's OT term)


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1 / n, dtype=F64)


@pytest.mark.parametrize(("cost", "eps"), [("cosine", 0.01), ("cosine", 0.1), ("sqeuclidean", 0.5)])
def test_sinkhorn_cost_is_pot_plan_transport_cost_not_entropic_value(cost: str, eps: float) -> None:
    """⟨T^ε, C⟩ as the DLFD authors compute it (Dasol-Choi/DLFD unlearn/dlfd.py:19-23: T = sinkhorn(C, ε),
    ot_loss = sum(T * C), cosine cost dlfd.py:29-35) against POT's converged plan; the entropic value
    sinkhorn_loss differs from it by ε·KL(T ‖ a⊗b)."""
    x, y = randn(32, 10, seed=40), randn(24, 10, seed=41) + 1
    m = COSTS[cost](x[None], y[None])[0]
    kw = {"reg": eps, "method": "sinkhorn_log", "numItermax": 100000, "stopThr": 1e-13}
    pot_plan = ot.sinkhorn(_uniform(32), _uniform(24), m, **kw)
    plan = sinkhorn_plan(m, eps)
    torch.testing.assert_close(plan, pot_plan, rtol=1e-5, atol=1e-10)
    value = sinkhorn_cost(x, y, eps=eps, cost=cost)
    torch.testing.assert_close(value, (pot_plan * m).sum(), rtol=1e-8, atol=0)
    kl = (plan * (plan * 32 * 24).log()).sum()
    entropic = sinkhorn_loss(x, y, blur=eps**0.5, cost=cost, scaling=0.999)
    torch.testing.assert_close(entropic, value + eps * kl, rtol=1e-3, atol=0)
    assert eps * kl > 1e-3 * value  # the two quantities are not the same


def test_sinkhorn_cost_converges_where_plain_sinkhorn_stalls() -> None:
    """ε = 1e-3 on a cosine cost (C/ε up to 2000): the plan's marginals are met to the tolerance."""
    x, y = randn(100, 10, seed=42), randn(80, 10, seed=43) + 0.5
    plan = sinkhorn_plan(COSTS["cosine"](x[None], y[None])[0], eps=1e-3, tol=1e-9)
    assert (plan.sum(1) - 1 / 100).abs().sum() < 1e-9 and (plan.sum(0) - 1 / 80).abs().sum() < 1e-9


@pytest.mark.parametrize(("cost", "eps"), [("cosine", 0.01), ("sqeuclidean", 0.5)])
def test_sinkhorn_cost_gradient_matches_finite_differences(cost: str, eps: float) -> None:
    """The implicit gradient through the plan (what backpropagating through the authors' iterations,
    dlfd.py:37-65, converges to) against central differences, in both inputs."""
    x = randn(12, 5, seed=44).requires_grad_(True)
    y = (randn(9, 5, seed=45) + 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: sinkhorn_cost(a, b, eps=eps, cost=cost, tol=1e-13), (x, y), eps=1e-6, atol=1e-6, rtol=1e-4
    )


def test_sinkhorn_cost_gradient_includes_the_plan_derivative() -> None:
    """The full derivative differs from the envelope one (plan held fixed) the entropic cost would use."""
    x = randn(16, 6, seed=46).requires_grad_(True)
    y = randn(16, 6, seed=47) + 0.5
    (full,) = torch.autograd.grad(sinkhorn_cost(x, y, eps=0.05), x)
    plan = sinkhorn_plan(COSTS["cosine"](x[None], y[None])[0], 0.05)
    (envelope,) = torch.autograd.grad((plan * COSTS["cosine"](x[None], y[None])[0]).sum(), x)
    assert (full - envelope).norm() > 0.1 * envelope.norm()


def test_sinkhorn_cost_float32_in_float32_out_and_rejects_bad_arguments() -> None:
    x = randn(8, 3, seed=48).float().requires_grad_(True)
    value = sinkhorn_cost(x, randn(5, 3, seed=49).float())
    value.backward()
    assert value.dtype == x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="'euclid'"):
        sinkhorn_cost(x, x, cost="euclid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps > 0"):
        sinkhorn_cost(x, x, eps=0.0)
