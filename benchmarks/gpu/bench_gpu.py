"""One-call GPU measurement of OPT-OUT's cost: step time, peak memory and the SW share.

    benchmarks/gpu/run.sh                # GPU: ~1B Llama bf16 (plain, ZeRO-3 one rank), 8B + LoRA
    benchmarks/gpu/run.sh --tiny         # CPU, tiny shapes: the same code paths in seconds

Needs PyTorch and transformers only; DeepSpeed (ZeRO-3, one rank) and peft (LoRA) when importable —
a missing one turns its rows into "skipped" rows. No Ray, MLflow or pydantic: the otu pieces used
(:mod:`otu.llm.regulariser`, :mod:`otu.llm.engine`'s DeepSpeed shards, :mod:`otu.llm.losses`) need
torch only. Models are randomly initialised Llamas built on the device in bf16; batches are random
tokens, the authors' 8 sequences × 512 tokens for forget, retain and world.

Each row runs ``--warmup`` + ``--steps`` optimizer steps and reports the mean of the timed ones:

* NPO+RT   −(2/β)·log σ(β·(NLL_θ − NLL_ref)) on forget + NLL on retain
* OPT-OUT  the same + NLL on world + λ·Σ SW(θ, θ₀) (L = 100, closed-form gradient between backward
           and step, resampled directions), one optimizer step (the authors' alternate=false form)

Plain rows: AdamW on fp32 weights under bf16 autocast, frozen bf16 NPO reference (otu's plain
engine). ZeRO-3 rows: DeepSpeed bf16, fp32 masters in the optimizer, reference partitioned too.
LoRA rows (r = 16, α = 32, all attention and MLP projections): bf16 base frozen, fp32 adapters,
gradient checkpointing (three 8 × 512 batches through 8B would not otherwise fit), the reference is
the model with adapters disabled, SW on the adapter tensors. Output: ``results.md``
(a markdown table) and ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch
from torch import nn

from otu import process_group
from otu.llm.losses import npo_loss, sequence_nll
from otu.llm.regulariser import LocalShards, ParameterRegulariser
from otu.llm.text import Batch

SHAPES = {  # layers, hidden, heads, kv heads, intermediate, vocab
    "1b": (16, 2048, 32, 8, 5632, 32000),  # ~1.0 B (TinyLlama-like)
    "8b": (32, 4096, 32, 8, 14336, 128256),  # Llama-3-8B's shape
    "tiny": (2, 64, 4, 2, 128, 256),
    "tiny-wide": (2, 128, 4, 2, 256, 512),
}
BETA, LAMBDA, L = 0.1, 0.1, 100


@dataclass
class Row:
    model: str
    params_m: float
    engine: str
    method: str
    step_s: float | None = None
    sw_s: float | None = None
    sw_share: float | None = None
    peak_gib: float | None = None
    note: str = ""


def build(shape: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, heads, kv, inter, vocab = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        use_cache=False,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)


def batches(vocab: int, batch: int, length: int, device: torch.device) -> dict[str, Batch]:
    gen = torch.Generator().manual_seed(1)
    out = {}
    for name in ("forget", "retain", "world"):
        ids = torch.randint(3, vocab, (batch, length), generator=gen)
        out[name] = Batch(ids, torch.ones_like(ids), ids.clone()).to(device)
    return out


def loss_of(method: str, model, ref_nll, data: dict[str, Batch]) -> torch.Tensor:
    loss = npo_loss(sequence_nll(model, data["forget"]), ref_nll, BETA)
    loss = loss + sequence_nll(model, data["retain"]).mean()
    if method == "optout":
        loss = loss + sequence_nll(model, data["world"]).mean()
    return loss


class Plain:
    """AdamW on fp32 (or fp32-adapter) weights, bf16 autocast on CUDA."""

    def __init__(self, model: nn.Module, ref, device: torch.device) -> None:
        self.model, self.ref = model, ref
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        self.shards = LocalShards()
        bf16 = device.type == "cuda"
        self.autocast = torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class ZeRO3:
    """DeepSpeed ZeRO-3 on one rank, bf16 with fp32 masters; the reference partitioned too."""

    def __init__(self, model: nn.Module, ref: nn.Module, device: torch.device) -> None:
        import deepspeed

        from otu.llm.engine import DeepSpeedShards, without_shm_comm_op

        without_shm_comm_op()
        config = {
            "train_batch_size": 8,
            "train_micro_batch_size_per_gpu": 8,
            "zero_optimization": {"stage": 3},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": True},
            "steps_per_print": 2**31 - 1,
        }
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        self.model, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.ref = deepspeed.initialize(model=ref, config=config)[0]
        self.ref.eval()
        self.params = [p for p in self.model.module.parameters() if p.requires_grad]
        self.shards = DeepSpeedShards(0, 1, device)
        self.autocast = contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)

    def step(self) -> None:
        self.model.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process high-water mark


def measure(engine, method: str, data, args, device: torch.device) -> tuple[float, float]:
    """Mean step and SW seconds over the timed steps."""
    reg = None
    if method == "optout":
        reg = ParameterRegulariser("wasserstein", LAMBDA, engine.params, engine.shards, L)
    steps, sw = [], []
    for step in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        with engine.autocast:
            with torch.no_grad():
                ref_nll = sequence_nll(engine.ref, data["forget"])
            loss = loss_of(method, engine.model, ref_nll, data)
        engine.backward(loss)
        sw_s = 0.0
        if reg is not None:
            sync(device)
            t = time.perf_counter()
            reg.apply(step)
            sync(device)
            sw_s = time.perf_counter() - t
        engine.step()
        sync(device)
        if step >= args.warmup:
            steps.append(time.perf_counter() - start)
            sw.append(sw_s)
    return sum(steps) / len(steps), sum(sw) / len(sw)


class Adapterless(nn.Module):
    """The LoRA model with its adapters disabled: θ₀ and the NPO reference, no second copy."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


def setup(kind: str, shape: str, device: torch.device):
    """(engine, parameter count) for ``plain``, ``zero3`` or ``lora``."""
    bf16 = torch.bfloat16 if device.type == "cuda" else torch.float32
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        base = build(shape, device, bf16)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        count = sum(p.numel() for p in base.parameters())
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        return Plain(model, Adapterless(model), device), count
    if kind == "zero3":
        model = build(shape, device, bf16)
        count = sum(p.numel() for p in model.parameters())
        ref = build(shape, device, bf16)
        ref.load_state_dict(model.state_dict())
        ref.requires_grad_(False)
        return ZeRO3(model, ref, device), count
    model = build(shape, device, torch.float32)
    ref = build(shape, device, bf16)
    ref.load_state_dict(model.state_dict())
    ref.requires_grad_(False)
    return Plain(model, ref.eval(), device), sum(p.numel() for p in model.parameters())


def run(kind: str, shape: str, method: str, args, device: torch.device) -> Row:
    row = Row(shape, 0.0, kind, method)
    missing = {"zero3": "deepspeed", "lora": "peft"}.get(kind)
    if missing and importlib.util.find_spec(missing) is None:
        row.note = f"skipped: {missing} not importable"
        return row
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        engine, count = setup(kind, shape, device)
        row.params_m = count / 1e6
        data = batches(SHAPES[shape][5], args.batch, args.length, device)
        row.step_s, row.sw_s = measure(engine, method, data, args, device)
        row.sw_share = row.sw_s / row.step_s
        row.peak_gib = peak_gib(device)
        if kind == "lora" and method == "optout":
            row.note = "grad checkpointing; SW on the adapter tensors"
    except Exception as exc:  # one failing row (out of memory, a DeepSpeed error) keeps the others
        row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        traceback.print_exc()
    finally:
        engine = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def table(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| model | params (M) | engine | method | step (s) | SW (s) | SW share | peak mem (GiB) | note |",
        "|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r.model} | {r.params_m:.1f} | {r.engine} | {r.method} | {fmt(r.step_s, '.3f')} "
            f"| {fmt(r.sw_s, '.3f')} | {fmt(r.sw_share, '.1%')} | {fmt(r.peak_gib, '.2f')} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def init_single_rank() -> None:
    """A one-process group for DeepSpeed (no launcher)."""
    if importlib.util.find_spec("deepspeed") is None or torch.distributed.is_initialized():
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    process_group.init_single_rank("nccl" if torch.cuda.is_available() else "gloo")  # in-memory store, no port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; tiny 1)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        args.steps, args.warmup = args.steps or 2, args.warmup or 1
        args.batch, args.length = 2, 16
        small, large = "tiny", "tiny-wide"
        torch.set_num_threads(1)
    else:
        args.steps, args.warmup = args.steps or 5, args.warmup or 2
        args.batch, args.length = 8, 512
        small, large = "1b", "8b"
    init_single_rank()
    rows = []
    for kind, shape in (("plain", small), ("zero3", small), ("lora", large)):
        for method in ("npo_rt", "optout"):
            rows.append(run(kind, shape, method, args, device))
            print(table(rows[-1:], "").strip().splitlines()[-1], flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    header = (
        f"# OPT-OUT cost on {name or platform.machine()} ({device.type}), {date.today()}, torch "
        f"{torch.__version__}, batch {args.batch}×{args.length} tokens, {args.steps} timed steps "
        f"after {args.warmup}; peak memory: {'max allocated' if device.type == 'cuda' else 'max RSS'}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table(rows, header))
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(table(rows, header))
    return 0 if all(r.step_s is not None or r.note.startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
