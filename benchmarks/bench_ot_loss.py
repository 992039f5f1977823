"""OT between feature batches, forward + backward: otu's plan cost and entropic loss vs POT vs a plain loop.

    python benchmarks/bench_ot_loss.py [--blur 0.1] [--tol 1e-6] [--max-iter 1000] [--min-time 2.0]

DLFD's setting: cosine cost C = 1 − cos(x_i, y_j), uniform weights, ε = blur² (default 0.01, the
authors' value), x = N(0, I) and y = N(0.5, I) batches of n samples in R^D, float32, gradient w.r.t. x.

* cost   ``otu.ot.sinkhorn_cost(x, y, eps, cost="cosine")`` — DLFD's OT term: ε-scaled Newton solve
         of the plan to ‖π1 − a‖₁ < 1e-9, gradient through the plan by implicit differentiation;
         returns ⟨π, C⟩
* otu    ``otu.ot.sinkhorn_loss(x, y, blur, cost="cosine")`` — geomloss, ε-annealing (scaling 0.9),
         envelope-theorem gradient; returns OT_ε = ⟨π, C⟩ + ε KL(π | a⊗b) (the generative family's)
* pot    ``ot.sinkhorn2(a, b, C, reg=ε, method="sinkhorn_log")`` on torch tensors, stopping when the
         column-marginal error is below ``--tol`` (checked every 10 iterations), autograd through
         every iteration; returns ⟨π, C⟩
* plain  a log-domain Sinkhorn loop written here with the same stopping rule, autograd through every
         iteration (what DLFD's authors do); returns ⟨π, C⟩

Accuracy: relative error against float64 POT on the same problem (⟨π, C⟩ for cost, pot and plain,
⟨π, C⟩ + ε KL for otu), run to a marginal error of 1e-10 or 5000 iterations (at D = 10 the value then
still moves by ~1e-5 relative). Every subprocess uses one torch thread and first calls each method
once on tiny inputs. Peak memory: one fresh subprocess per (case, method); the resident-set
high-water mark of the first full-size call (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``
after the inputs are built and ``malloc_trim``) minus the resident set just before it. Time: one
subprocess per case times the methods in interleaved rounds (so load from other processes hits all
alike), at least 3 rounds and ``--min-time`` seconds, no new round after 60 s; medians of process
CPU time and of wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import date

import numpy as np
import ot
import torch
from _harness import interleaved_times, peak_extra_mib

from otu.ot import cosine_cost, sinkhorn_cost, sinkhorn_loss

BATCHES = (32, 128, 512)
FEATURES = (10, 128, 512)
METHODS = ("cost", "otu", "pot", "plain")


def batches(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's float64 inputs: x ~ N(0, I), y ~ N(0.5, I), n samples each in R^d."""
    gen = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5


def plain_log_sinkhorn(
    x: torch.Tensor, y: torch.Tensor, eps: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, int]:
    """⟨π, C⟩ for the cosine cost by log-domain Sinkhorn (autograd through the loop), iterations.

    π_ij = exp(u_i + v_j − C_ij/ε) with u = log a − LSE_j(v_j − C_ij/ε), v = log b − LSE_i(u_i − C_ij/ε).
    """
    cost = cosine_cost(x[None], y[None])[0]
    neg_k = -cost / eps
    log_a = torch.full((x.shape[0],), -math.log(x.shape[0]), dtype=x.dtype)
    log_b = torch.full((y.shape[0],), -math.log(y.shape[0]), dtype=x.dtype)
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    it = 0
    while it < max_iter:
        it += 1
        v = log_b - torch.logsumexp(neg_k + u[:, None], dim=0)
        u = log_a - torch.logsumexp(neg_k + v[None, :], dim=1)
        if it % 10 == 0:
            with torch.no_grad():
                plan = (neg_k + u[:, None] + v[None, :]).exp()
                if (plan.sum(0) - log_b.exp()).norm() < tol:
                    break
    return ((neg_k + u[:, None] + v[None, :]).exp() * cost).sum(), it


def make_inputs(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 batches of the case, x a leaf that requires grad."""
    x64, y64 = batches(n, d)
    return x64.float().requires_grad_(True), y64.float()


def make_call(
    method: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> Callable[[], tuple[float, int]]:
    """A call computing the loss and its gradient w.r.t. x; returns (value, iterations)."""
    eps = args.blur**2
    unif = torch.full((x.shape[0],), 1.0 / x.shape[0])

    def solve() -> tuple[torch.Tensor, int]:
        if method == "cost":
            return sinkhorn_cost(x, y, eps, cost="cosine"), 0
        if method == "otu":
            # geomloss: one update per ε from diameter² = 2 (max cosine cost) down to blur²
            steps = np.arange(math.log(2.0), 2 * math.log(args.blur), 2 * math.log(0.9))
            return sinkhorn_loss(x, y, blur=args.blur, cost="cosine"), len(steps) + 2
        if method == "pot":
            cost = cosine_cost(x[None], y[None])[0]
            value, log = ot.sinkhorn2(
                unif,
                unif,
                cost,
                reg=eps,
                method="sinkhorn_log",
                numItermax=args.max_iter,
                stopThr=args.tol,
                log=True,
            )
            return value, int(log["niter"]) + 1  # POT reports the last 0-based index
        return plain_log_sinkhorn(x, y, eps, args.tol, args.max_iter)

    def call() -> tuple[float, int]:
        x.grad = None
        value, iters = solve()
        value.backward()
        return value.item(), iters

    return call


def reference(n: int, d: int, eps: float) -> tuple[float, float]:
    """Converged float64 POT: (⟨π, C⟩, ⟨π, C⟩ + ε KL(π | a⊗b))."""
    x, y = (t.numpy() for t in batches(n, d))
    a = np.full(n, 1.0 / n)
    cost = ot.dist(x, y, metric="cosine")
    plan = ot.sinkhorn(a, a, cost, reg=eps, method="sinkhorn_log", numItermax=5000, stopThr=1e-10)
    linear = float((plan * cost).sum())
    kl = float((plan * np.log(np.maximum(plan, 1e-300) / np.outer(a, a))).sum())
    return linear, linear + eps * kl


def worker(kind: str, method: str, n: int, d: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    methods = METHODS if kind == "time" else (method,)
    tiny = make_inputs(8, d)
    for m in methods:  # load every code path on tiny inputs first
        make_call(m, *tiny, args)()
    x, y = make_inputs(n, d)
    calls = {m: make_call(m, x, y, args) for m in methods}
    if kind == "time":
        print(json.dumps(interleaved_times(calls, args.min_time)))
    else:
        peak, (value, iters) = peak_extra_mib(calls[method])
        print(json.dumps({"peak_mib": peak, "value": value, "iters": iters}))


def run_worker(kind: str, method: str, n: int, d: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, method, str(n), str(d)]
    cmd += ["--blur", str(args.blur), "--tol", str(args.tol)]
    cmd += ["--max-iter", str(args.max_iter), "--min-time", str(args.min_time)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blur", type=float, default=0.1, help="ε = blur² (default ε = 0.01)")
    parser.add_argument("--tol", type=float, default=1e-6, help="marginal error to stop pot/plain")
    parser.add_argument("--max-iter", type=int, default=1000, help="iteration cap for pot/plain")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed rounds")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(BATCHES), help="batch sizes n")
    parser.add_argument("--features", type=int, nargs="+", default=list(FEATURES), help="feature sizes D")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, method, n, d = args.worker
        worker(kind, method, int(n), int(d), args)
        return
    eps = args.blur**2
    print(
        f"# Sinkhorn loss + gradient, cosine cost, eps={eps:g}, tol={args.tol:g}, float32, "
        f"{date.today()}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"1 torch thread, load average {os.getloadavg()[0]:.1f} at start\n"
    )
    print(
        "| n | D | method | iters | CPU time (ms) | CPU / otu | wall (ms) | timed calls "
        "| peak extra (MiB) | peak / otu | rel. error |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for d in args.features:
            linear, entropic = reference(n, d, eps)
            mem = {m: run_worker("mem", m, n, d, args) for m in METHODS}
            times = run_worker("time", "all", n, d, args)
            for m in METHODS:
                t, base, r = times[m], times["otu"], mem[m]
                target = entropic if m == "otu" else linear
                print(
                    f"| {n} | {d} | {m} | {r['iters'] or '—'} | {t['cpu'] * 1e3:.1f} "
                    f"| {t['cpu'] / base['cpu']:.1f} | {t['wall'] * 1e3:.1f} | {t['runs']} "
                    f"| {r['peak_mib']:.1f} | {r['peak_mib'] / max(mem['otu']['peak_mib'], 0.1):.1f} "
                    f"| {abs(r['value'] - target) / abs(target):.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
