"""The unlearning loop: one plain function per rank, under any launcher.

Single process (plain PyTorch, or DeepSpeed on a one-rank gloo group when ``zero_stage > 0``), under
``deepspeed``/``torchrun`` (the process group comes from the environment), or as a Ray Train worker
(Ray made the group). Every step draws one global batch of forget, retain and world items from seeded
streams (identical on every rank); rank r takes micro-batch slices ``(m·world + r)`` for accumulation
step m, so the global step equals the single-process one. Every rank calls ``report`` with the
rank-averaged terms (identical on all ranks; reporters write on rank 0). Every ``dynamics.every``
steps (but the last: the final model is evaluated anyway) ``report`` also gets a checkpoint to
evaluate: the live model in a plain process (the platform snapshots it), otherwise a HF checkpoint
``<checkpoint_dir>-<step>`` that every rank wrote its part of (collective, like the final save).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from otu.llm.data import Record
from otu.llm.engine import DeepSpeedEngine, PlainEngine, steps_for, total_optimizer_steps
from otu.llm.lora import LoraRegulariser
from otu.llm.lora import regulariser as lora_regulariser
from otu.llm.losses import Objective, StepBatches, objective_for
from otu.llm.models import resolve_device
from otu.llm.regulariser import ParameterRegulariser
from otu.llm.text import Encoder
from otu.registry import TOTAL_STEPS, Reporter


class Stream:
    """An endless stream of indices 0…n−1, reshuffled (seeded) on every pass."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: list[int] = []

    def take(self, k: int) -> list[int]:
        while len(self.buffer) < k:
            self.buffer += torch.randperm(self.n, generator=self.generator).tolist()
        out, self.buffer = self.buffer[:k], self.buffer[k:]
        return out


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def worker_device(setting: str) -> torch.device:
    device = resolve_device(setting)
    if device.type == "cuda":
        index = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.device_count() > 1 else 0
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def ensure_process_group(backend: str) -> None:
    """A one-rank process group for DeepSpeed in a single process, unless one exists already.

    It is kept for the life of the process: DeepSpeed caches the group it first sees, so a second
    run in the same process must find the same one.
    """
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def run_worker(exp, prepared, report: Reporter, checkpoint_dir: Path) -> None:
    """Unlearn ``prepared``'s target model with ``exp.method``; write the HF checkpoint to ``checkpoint_dir``."""
    torch.set_num_threads(exp.compute.threads)
    device = worker_device(exp.compute.device)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _, world = rank_and_world()
    use_ds = exp.compute.zero_stage > 0 or world > 1
    if use_ds:
        ensure_process_group("nccl" if device.type == "cuda" else "gloo")
    _train(exp, prepared, report, checkpoint_dir, device, use_ds)


def _train(
    exp, prepared, report: Reporter, checkpoint_dir: Path, device: torch.device, use_ds: bool
) -> None:
    method = exp.method
    objective = objective_for(method)
    is_optout = method.name == "optout"
    alternate = is_optout and method.alternate
    scheduled = steps_for(method, len(prepared.splits["forget"]))
    steps = steps_run(method, len(prepared.splits["forget"]), scheduled)
    engine_cls = DeepSpeedEngine if use_ds else PlainEngine
    engine = engine_cls(
        exp,
        prepared.target_path,
        device,
        needs_ref=objective.needs_reference,
        total_steps=total_optimizer_steps(scheduled, alternate),
    )
    regulariser = _regulariser(exp, engine) if is_optout else None
    encoder = prepared.encoder()
    tokenizer = prepared.tokenizer()
    streams = {
        name: Stream(len(prepared.splits[name]), exp.seed + k)
        for k, name in enumerate(("forget", "retain", "world"))
        if prepared.splits[name]  # TOFU without a world file has no world training set
    }
    # alternating: a forget step, then a retain + world + regulariser step
    phases = (
        [(True, False, None), (False, True, regulariser)]
        if alternate
        else [(True, True, regulariser)]
    )
    for step in range(steps):
        start = time.perf_counter()
        global_idx = {name: s.take(method.batch_size) for name, s in streams.items()}
        micro = _micro_batches(
            exp, prepared.splits, encoder, global_idx, engine.rank, engine.world, device
        )
        logs: dict[str, float] = {}
        for forget, retain, reg in phases:
            logs |= _phase(
                engine, objective, micro, forget=forget, retain=retain, regulariser=reg, step=step
            )
        logs["loss"] = logs["forget_loss"] + logs.get("retain_loss", 0.0)
        if regulariser is not None:
            logs["loss"] += method.reg_weight * logs["reg"]
        logs["lr"] = engine.lr()
        logs["tokens"] = float(sum(_tokens(b) for b in micro))
        logs["step_time_s"] = time.perf_counter() - start
        logs = engine.all_mean(logs) | {TOTAL_STEPS: steps}
        due = exp.dynamics.every and step % exp.dynamics.every == 0 and step < steps - 1
        checkpoint = _checkpoint(engine, step, checkpoint_dir, tokenizer) if due else None
        report(step, logs) if checkpoint is None else report(step, logs, checkpoint)
    engine.save(checkpoint_dir, tokenizer)


def steps_run(method, forget_size: int, scheduled: int) -> int:
    """Steps actually taken: the schedule's, or the first ``stop_after_epochs`` epochs of it (the
    learning-rate schedule still spans all ``scheduled`` steps)."""
    if method.stop_after_epochs is None:
        return scheduled
    per_epoch = math.ceil(forget_size / method.batch_size)
    return min(scheduled, max(1, math.ceil(method.stop_after_epochs * per_epoch)))


def _checkpoint(engine, step: int, checkpoint_dir: Path, tokenizer) -> nn.Module | Path:
    """The model to evaluate after ``step``: the live one in a plain process, else a saved checkpoint."""
    if isinstance(engine, PlainEngine):
        return engine.model
    path = checkpoint_dir.with_name(f"{checkpoint_dir.name}-{step}")
    engine.save(path, tokenizer)
    return path


def _regulariser(exp, engine) -> ParameterRegulariser | LoraRegulariser:
    """OPT-OUT's regulariser. With LoRA: D(W₀ + sBA, W₀) on the adapted layers (θ₀ = the base
    weights); otherwise over the trainable tensors, θ₀ their fp32 master value now."""
    method = exp.method
    if method.lora is not None:
        return lora_regulariser(exp, _module(engine.model), engine.gather, engine.add_grad)
    return ParameterRegulariser(
        kind=method.regulariser,
        weight=method.reg_weight,
        params=[p for p in _module(engine.model).parameters() if p.requires_grad],
        shards=engine.shards,
        n_projections=method.n_projections,
        resample=method.resample_projections,
        seed=exp.seed,
        bucket_numel=method.reg_bucket_numel,
    )


def _module(model):
    return getattr(model, "module", model)


def _micro_batches(
    exp,
    splits: dict[str, list[Record]],
    encoder: Encoder,
    global_idx: dict[str, list[int]],
    rank: int,
    world: int,
    device: torch.device,
) -> list[StepBatches]:
    method = exp.method
    size = method.batch_size // (world * exp.compute.grad_accum)
    out = []
    for m in range(exp.compute.grad_accum):
        lo = (m * world + rank) * size
        pick = {name: idx[lo : lo + size] for name, idx in global_idx.items()}

        def batch(name: str, answers=None, pick=pick):
            if name not in pick:
                return None
            records = [splits[name][i] for i in pick[name]]
            return encoder.batch(
                [r.question for r in records], answers or [r.answer for r in records]
            ).to(device)

        idk = None
        if method.name == "idk":
            responses = method.responses
            idk = batch("forget", [responses[i % len(responses)] for i in pick["forget"]])
        out.append(StepBatches(batch("forget"), batch("retain"), batch("world"), idk))
    return out


def _tokens(batches: StepBatches) -> int:
    """Tokens this rank fed through the model for one step's micro-batch."""
    used = [
        batches.idk if batches.idk is not None else batches.forget,
        batches.retain,
        batches.world,
    ]
    return sum(int(b.attention_mask.sum()) for b in used if b is not None)


def _phase(
    engine,
    objective: Objective,
    micro: list[StepBatches],
    *,
    forget: bool,
    retain: bool,
    regulariser: ParameterRegulariser | None,
    step: int,
) -> dict[str, float]:
    """Forward/backward over the micro-batches, regulariser gradient at the boundary, one optimizer step."""
    sums: dict[str, float] = defaultdict(float)
    for batches in micro:
        terms = []
        with engine.autocast:
            if forget:
                term = objective.forget_term(engine.model, engine.ref, batches)
                sums["forget_loss"] += term.item() / len(micro)
                terms.append(term)
            if retain:
                term = objective.retain_term(engine.model, batches)
                if term is not None:
                    sums["retain_loss"] += term.item() / len(micro)
                    terms.append(term)
        engine.backward(sum(terms[1:], terms[0]))
        if regulariser is not None and engine.boundary():
            start = time.perf_counter()
            sums["reg"] = regulariser.apply(step)
            sums["reg_time_s"] = time.perf_counter() - start
        engine.step()
    return dict(sums)
