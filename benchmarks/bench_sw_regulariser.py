"""OPT-OUT's per-tensor SW regulariser: closed form vs autograd through sort vs POT (value + gradient).

    python benchmarks/bench_sw_regulariser.py [--quick] [--projections 100] [--min-time 2.0]

Methods, each giving SW(W, W₀) = (1/L) Σ_l Σ_i (sort(WU) − sort(W₀U))² and ∂SW/∂W for one tensor:

* floor         the FLOP floor: the two matmuls P = WU and R·Uᵀ alone (4·n·d·L FLOPs), no sort
* closed        ``otu.ot.sw_regulariser`` — sort(W₀U), then two matmuls and a sort, no graph
* closed-cached ``otu.ot.sw_regulariser_sorted`` with sort(W₀U) computed once (W₀ and U are frozen),
                gradient accumulated into a zeroed buffer as the regulariser does (one ``addmm_``)
* autograd      ``otu.ot.sw_regulariser_autograd`` + ``backward()`` (autograd through ``torch.sort``)
* pot           ``n · ot.sliced_wasserstein_distance(W, W₀, projections=U) ** 2`` + ``backward()``

Inputs: W₀ ~ 0.02·N(0, 1), W = W₀ + 0.001·N(0, 1), float32, U from ``random_projections``. Every
subprocess uses one torch thread and first calls each method once on tiny inputs. Peak memory: one
fresh subprocess per (tensor, method); the resident-set high-water mark of the first full-size call
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after the inputs are built and
``malloc_trim``) minus the resident set just before it — the memory one call needs on top of W, W₀,
U (and the cached sort(W₀U)). Time: one subprocess per tensor times the methods in interleaved rounds
(so load from other processes hits all alike), at least 3 rounds and ``--min-time`` seconds, no new
round after 60 s; medians of process CPU time and of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import date

import ot
import torch
from _harness import interleaved_times, peak_extra_mib

from otu.ot import (
    random_projections,
    sorted_projection,
    sw_regulariser,
    sw_regulariser_autograd,
    sw_regulariser_sorted,
)

SHAPES = {
    "256x256": (256, 256),
    "1024x1024": (1024, 1024),
    "4096x4096": (4096, 4096),
    "embed-32000x4096": (32000, 4096),
}
METHODS = ("floor", "closed", "closed-cached", "autograd", "pot")


def make_inputs(shape: tuple[int, int], n_proj: int) -> dict[str, torch.Tensor]:
    """W, W₀ (W a leaf that requires grad, for the autograd methods) and U."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(shape, generator=gen) * 0.02
    w = (w0 + 0.001 * torch.randn(shape, generator=gen)).requires_grad_(True)
    return {"w": w, "w0": w0, "u": random_projections(shape[1], n_proj, seed=1)}


def make_call(method: str, inputs: dict[str, torch.Tensor]) -> Callable[[], float]:
    """A call computing SW and ∂SW/∂W with ``method``; returns SW."""
    w, w0, u = inputs["w"], inputs["w0"], inputs["u"]
    if method == "floor":
        rows = w.detach()
        residual = rows @ u

        def floor() -> float:
            proj = rows @ u
            return float((residual @ u.T)[0, 0] + proj[0, 0])

        return floor
    if method == "closed":
        return lambda: sw_regulariser(w, w0, u)[0].item()
    if method == "closed-cached":
        ref = sorted_projection(w0, u)
        rows = w.detach()
        return lambda: sw_regulariser_sorted(rows, ref, u, out=torch.zeros_like(rows))[0].item()

    def backward(value: torch.Tensor) -> float:
        w.grad = None
        value.backward()
        return value.item()

    if method == "autograd":
        return lambda: backward(sw_regulariser_autograd(w, w0, u))
    return lambda: backward(ot.sliced_wasserstein_distance(w, w0, projections=u) ** 2 * w.shape[0])


def worker(kind: str, case: str, method: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    tiny = make_inputs((64, 32), args.projections)
    methods = METHODS if kind == "time" else (method,)
    for m in methods:  # load every code path on tiny inputs first
        make_call(m, tiny)()
    inputs = make_inputs(SHAPES[case], args.projections)
    calls = {m: make_call(m, inputs) for m in methods}
    if kind == "time":
        print(json.dumps(interleaved_times(calls, args.min_time)))
    else:
        peak, value = peak_extra_mib(calls[method])
        print(json.dumps({"peak_mib": peak, "value": value}))


def run_worker(kind: str, case: str, method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, case, method]
    cmd += ["--projections", str(args.projections), "--min-time", str(args.min_time)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 32000x4096 embedding")
    parser.add_argument("--projections", type=int, default=100, help="L (default: OPT-OUT's 100)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed rounds")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, case, method = args.worker
        worker(kind, case, method, args)
        return
    cases = [c for c in SHAPES if not (args.quick and c.startswith("embed"))]
    print(
        f"# SW regulariser + gradient, L={args.projections}, float32, {date.today()}, torch "
        f"{torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread, "
        f"load average {os.getloadavg()[0]:.1f} at start\n"
    )
    print(
        "| tensor | method | CPU time (ms) | ÷ floor | ÷ autograd | GFLOP/s at 4ndL | wall (ms) "
        "| timed calls | peak extra (MiB) | SW |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases:
        mem = {m: run_worker("mem", case, m, args) for m in METHODS}
        times = run_worker("time", case, "all", args)
        n, d = SHAPES[case]
        flops = 4 * n * d * args.projections
        for m in METHODS:
            t = times[m]
            print(
                f"| {case} | {m} | {t['cpu'] * 1e3:.1f} | {t['cpu'] / times['floor']['cpu']:.2f} "
                f"| {t['cpu'] / times['autograd']['cpu']:.2f} | {flops / t['cpu'] / 1e9:.1f} "
                f"| {t['wall'] * 1e3:.1f} | {t['runs']} | {mem[m]['peak_mib']:.1f} "
                f"| {'—' if m == 'floor' else format(mem[m]['value'], '.6g')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
