"""OPT-OUT with LoRA vs full weights: the SW regulariser's share of a step, and the memory of θ₀.

Runs the family's real per-rank loop (:func:`otu.llm.loop.run_worker`, one process) on a randomly
initialised Llama (see ``bench_optout_step.py``), OPT-OUT in one optimizer step (``alternate: false``,
fixed projections so that sort(W₀U) is cached in both), once on all weights and once with LoRA
adapters (rank ``--rank``) on every attention and MLP projection. It prints the mean step time, the
SW time and its share, and the parameter memory the engine holds for θ₀ (the NPO reference and the
regulariser's anchor): a frozen copy without LoRA, the same weights with the adapters disabled with
LoRA — counted as bytes of tensor storage not shared with the trained model (resident-set sizes do
not tell, since ``from_pretrained`` memory-maps the checkpoint) — beside the adapters' own bytes.

    python benchmarks/bench_lora_step.py --size small --rank 16
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import torch
from bench_optout_step import SIZES, build_checkpoint, experiment, run

from otu.llm.engine import EngineSettings, PlainEngine
from otu.spec import Experiment


def with_lora(exp: Experiment, rank: int | None, resample: bool) -> Experiment:
    changes: dict[str, Any] = {"method.resample_projections": resample}
    if rank is not None:
        changes["method.lora"] = {"r": rank, "alpha": 2 * rank, "dropout": 0.0}
    return exp.with_overrides(changes)


def _storages(module: torch.nn.Module) -> dict[int, int]:
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}


def memory_mib(exp: Experiment, model_dir: Path) -> tuple[float, float]:
    """(θ₀ bytes not shared with the trained model, trainable bytes) of an engine, in MiB."""
    settings = EngineSettings(exp.job(), exp.compute, model_dir, torch.device("cpu"), needs_ref=True, total_steps=1)
    engine = PlainEngine(settings)
    trained = _storages(engine.model)
    ref = {k: v for k, v in _storages(engine.ref).items() if k not in trained}
    trainable = sum(p.numel() * p.element_size() for p in engine.model.parameters() if p.requires_grad)
    return sum(ref.values()) / 2**20, trainable / 2**20


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
    print("| weights | step (s) | SW (s) | SW share of step | θ₀ copy (MiB) | trained (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        base = experiment("optout", args, work)
        params = build_checkpoint(args.size, base, work / "model")
        rows = {}
        for label, rank in (("full", None), (f"LoRA r={args.rank}", args.rank)):
            exp = with_lora(base, rank, resample=False)
            timing = run(exp, work / "model", work, args.warmup)
            ref_mib, trained_mib = memory_mib(exp, work / "model")
            rows[label] = (timing, ref_mib)
            print(
                f"| {label} | {timing['step_s']:.3f} | {timing['reg_s']:.4f} | "
                f"{timing['reg_s'] / timing['step_s']:.1%} | {ref_mib:.1f} | {trained_mib:.1f} |",
                flush=True,
            )
    (full, full_mib), (lora, lora_mib) = rows.values()
    print(
        f"\n{params / 1e6:.1f} M parameters · SW time LoRA / full: {lora['reg_s'] / full['reg_s']:.3f} · "
        f"θ₀ copy LoRA / full: {lora_mib / full_mib:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
