"""OPT-OUT with LoRA vs full weights: the SW regulariser's share of a step, and the memory of θ₀.

Runs the family's real per-rank loop (:func:`otu.llm.loop.run_worker`, one process) on a randomly
initialised Llama (see ``bench_optout_step.py``), OPT-OUT in one optimizer step (``alternate: false``,
fixed projections so that sort(W₀U) is cached in both), once on all weights and once with LoRA
adapters (rank ``--rank``) on every attention and MLP projection. It prints the mean step time, the
SW time and its share, and the peak extra resident memory of building the training engine with θ₀
(a frozen copy without LoRA; the same model with adapters disabled with LoRA) over building it
without θ₀.

    python benchmarks/bench_lora_step.py --size small --rank 16
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
from _harness import peak_extra_mib
from bench_optout_step import SIZES, build_checkpoint, experiment, run

from otu.llm.engine import PlainEngine


def with_lora(exp, rank: int | None, resample: bool):
    changes = {"method.resample_projections": resample}
    if rank is not None:
        changes["method.lora"] = {"r": rank, "alpha": 2 * rank, "dropout": 0.0}
    return exp.with_overrides(changes)


def reference_mib(exp, model_dir: Path) -> float:
    """Peak extra memory of an engine with θ₀ minus that of one without (MiB)."""
    sizes = {}
    for needs_ref in (False, True):
        sizes[needs_ref], engine = peak_extra_mib(
            lambda needs_ref=needs_ref: PlainEngine(exp, model_dir, torch.device("cpu"), needs_ref, 1)
        )
        del engine
    return sizes[True] - sizes[False]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--projections", type=int, default=100)
    args = parser.parse_args(argv)
    args.device, args.zero_stage, args.precision, args.grad_checkpointing = "cpu", 0, "fp32", False
    torch.set_num_threads(1)
    print(
        f"# {date.today()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
        f"{args.size} · batch {args.batch_size} · L={args.projections} · fixed projections · "
        f"mean of steps {args.warmup}..{args.steps - 1}"
    )
    print("| weights | step (s) | SW (s) | SW share of step | θ₀ extra memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        base = experiment("optout", args, work)
        params = build_checkpoint(args.size, base, work / "model")
        rows = {}
        for label, rank in (("full", None), (f"LoRA r={args.rank}", args.rank)):
            exp = with_lora(base, rank, resample=False)
            timing = run(exp, work / "model", work, args.warmup)
            rows[label] = (timing, reference_mib(exp, work / "model"))
            print(
                f"| {label} | {timing['step_s']:.3f} | {timing['reg_s']:.4f} | "
                f"{timing['reg_s'] / timing['step_s']:.1%} | {rows[label][1]:.1f} |",
                flush=True,
            )
    (full, full_mib), (lora, lora_mib) = rows.values()
    print(
        f"\n{params / 1e6:.1f} M parameters · SW time LoRA / full: {lora['reg_s'] / full['reg_s']:.3f} · "
        f"θ₀ memory LoRA / full: {lora_mib / full_mib:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
