"""The SW regulariser's share of a full OPT-OUT step, and step time with vs without it.

Runs the family's real per-rank loop (:func:`otu.llm.loop.run_worker`, one process) on a randomly
initialised Llama of a given size, twice: OPT-OUT (NPO + retain + world + λ·SW in one optimizer step,
``alternate: false``) and NPO+RT (exactly the same without the regulariser). From the loop's own
per-step timings (``step_time_s``, ``reg_time_s``; the first ``--warmup`` steps dropped) it prints
the mean step time of each, the SW time and its share of the OPT-OUT step,
and the peak memory (CPU: max RSS; GPU: max allocated).

    python benchmarks/bench_optout_step.py --sizes tiny small               # CPU
    python benchmarks/bench_optout_step.py --sizes 1b --device cuda --zero-stage 3 --precision bf16
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otu.family import StepCallback
from otu.llm.data import load_splits
from otu.llm.loop import run_worker
from otu.llm.models import corpus, resolve_device, torch_dtype, train_tokenizer
from otu.llm.prepared import Prepared
from otu.llm.spec import LLMJob
from otu.spec import Experiment, parse_experiment

SIZES = {  # layers, hidden, heads, intermediate, vocab
    "tiny": (2, 128, 4, 256, 512),  # the shipped optout_tiny model (0.46 M parameters)
    "small": (4, 512, 8, 1536, 8192),  # 21 M
    "1b": (16, 2048, 16, 5632, 32000),  # 0.95 B (TinyLlama-like)
}


def experiment(method: str, args: argparse.Namespace, cache: Path) -> Experiment:
    options: dict[str, Any] = {"name": method, "lr": 1e-5, "steps": args.steps}
    options["batch_size"] = args.batch_size
    if method == "optout":
        options |= {"n_projections": args.projections, "alternate": False}  # = NPO+RT + λ·SW
    raw = {
        "name": "bench-optout-step",
        "seed": 0,
        "task": {
            "family": "llm",
            "data": {"synthetic": True, "max_length": 64},
            "model": {"tiny": {}, "epochs": 1},
        },
        "method": options,
        "eval": {},
        "tracking": {"cache_dir": str(cache)},
        "compute": {
            "device": args.device,
            "zero_stage": args.zero_stage,
            "precision": args.precision,
            "grad_checkpointing": args.grad_checkpointing,
        },
    }
    return parse_experiment(raw)


def build_checkpoint(size: str, exp: Experiment, out: Path) -> int:
    """A randomly initialised Llama of ``size`` with a tokenizer trained on the synthetic corpus."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, heads, intermediate, vocab = SIZES[size]
    job: LLMJob = exp.job()
    splits = load_splits(job.data, exp.seed)
    tokenizer = train_tokenizer(corpus([r for s in splits.values() for r in s], job.data.prompt), min(vocab, 1024))
    config = LlamaConfig(
        vocab_size=max(vocab, len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def run(exp: Experiment, model_dir: Path, work: Path, warmup: int) -> dict[str, float]:
    job: LLMJob = exp.job()
    prepared = Prepared(
        root=work,
        splits=load_splits(job.data, exp.seed),
        target_path=model_dir,
        oracle_path=None,
        data=job.data,
        device=resolve_device(exp.compute.device),
        dtype=torch_dtype(exp.compute.precision),
    )
    rows: list[dict[str, float]] = []
    reporter = StepCallback(lambda _step, metrics: rows.append(dict(metrics)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_worker(job, prepared, exp.context(reporter), work / f"out-{exp.method.name}")
    timed = rows[warmup:]
    return {
        "step_s": float(np.mean([r["step_time_s"] for r in timed])),
        "reg_s": float(np.mean([r.get("reg_time_s", 0.0) for r in timed])),
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2, 3])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--projections", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print(
        f"# {date.today()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
        f"device {args.device} · ZeRO-{args.zero_stage} · {args.precision} · batch {args.batch_size} · "
        f"L={args.projections} · mean of steps {args.warmup}..{args.steps - 1}"
    )
    print(
        "| model | params | NPO+RT step (s) | OPT-OUT step (s) | SW (s) | SW share of OPT-OUT step | "
        "OPT-OUT / NPO+RT | GPU peak (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-optout-") as tmp:
            work = Path(tmp)
            params = build_checkpoint(size, experiment("optout", args, work), work / "model")
            base = run(experiment("npo_rt", args, work), work / "model", work, args.warmup)
            opt = run(experiment("optout", args, work), work / "model", work, args.warmup)
            print(
                f"| {size} | {params / 1e6:.2f} M | {base['step_s']:.3f} | {opt['step_s']:.3f} | "
                f"{opt['reg_s']:.3f} | {opt['reg_s'] / opt['step_s']:.1%} | {opt['step_s'] / base['step_s']:.2f}× | "
                f"{opt['gpu_peak_gib']:.2f} |",
                flush=True,
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nprocess max RSS: {rss:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
