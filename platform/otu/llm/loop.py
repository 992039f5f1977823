"""The unlearning loop: one plain function per rank, under any launcher.

Single process (plain PyTorch, or DeepSpeed on a one-rank gloo group when ``zero_stage > 0``), under
``deepspeed``/``torchrun`` (the process group comes from the environment), or as a Ray Train worker
(Ray made the group). Every step draws one global batch of forget, retain and world items, seeded
(identical on every rank, :mod:`otu.llm.sampling`); rank r takes micro-batch slices ``(m·world + r)``
for accumulation step m, so the global step equals the single-process one. What is optimised, and in
how many optimizer steps, is the method's :class:`~otu.llm.objectives.Objective`; what the data
layout decides (how long, which NLL, how retain items are drawn, which steps are clipped) is the
run's :class:`~otu.llm.recipe.Recipe`. Every rank calls the reporter's ``on_step`` with the
rank-averaged terms (identical on all ranks; reporters write on rank 0). At the steps the reporter
``wants_checkpoint`` (but the last: the final model is evaluated anyway) ``on_checkpoint`` gets the
model to evaluate: the live model in a plain process (the platform snapshots it), otherwise a HF
checkpoint ``<checkpoint_dir>-<step>`` that every rank wrote its part of (collective, like the final
save). Every ``compute.checkpoint_every`` steps the loop's whole state goes to ``ctx.resume_dir``
(:mod:`otu.llm.resume`); a loop started on a directory holding one continues after its step.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from otu.family import TOTAL_STEPS, RunContext
from otu.llm.data import TRAIN, Splits
from otu.llm.engine import DeepSpeedEngine, Engine, EngineSettings, PlainEngine, steps_for, warmup_steps
from otu.llm.losses import StepBatches
from otu.llm.models import resolve_device
from otu.llm.objectives import Objective, Phase, objective_for
from otu.llm.prepared import Prepared
from otu.llm.recipe import recipe_for
from otu.llm.regulariser import Regulariser
from otu.llm.resume import LoopCheckpoints, interval
from otu.llm.sampling import StepSampler
from otu.llm.spec import LLMJob, LLMMethod
from otu.llm.text import Batch, Encoder
from otu.process_group import init_single_rank


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
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    init_single_rank(backend)  # no port: two runs started together cannot collide


def run_worker(
    job: LLMJob, prepared: Prepared, ctx: RunContext, checkpoint_dir: Path, objective: Objective | None = None
) -> None:
    """Unlearn ``prepared``'s target model with ``job.method``; write the HF checkpoint to ``checkpoint_dir``.

    ``objective``: what the loop optimises instead of the method's table row (a derived run, e.g. a
    relearning attack: :mod:`otu.llm.objectives.relearn`)."""
    torch.set_num_threads(ctx.threads)
    device = worker_device(ctx.device)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _, world = rank_and_world()
    use_ds = ctx.compute.zero_stage > 0 or world > 1
    if use_ds:
        ensure_process_group("nccl" if device.type == "cuda" else "gloo")
    _train(job, prepared, ctx, checkpoint_dir, device, use_ds, objective)


def _train(
    job: LLMJob,
    prepared: Prepared,
    ctx: RunContext,
    checkpoint_dir: Path,
    device: torch.device,
    use_ds: bool,
    objective: Objective | None = None,
) -> None:
    method: LLMMethod = job.method
    recipe = recipe_for(method, job.data.layout)
    objective = objective or objective_for(method, recipe)
    phases = objective.phases()
    scheduled = steps_for(method, len(prepared.splits["forget"]))
    steps = steps_run(method, len(prepared.splits["forget"]), scheduled, job.data.layout)
    engine_cls = DeepSpeedEngine if use_ds else PlainEngine
    torch.manual_seed(ctx.seed)  # the same LoRA initialisation (θ₀) in every process and on a restart
    settings = EngineSettings(
        job,
        ctx.compute,
        prepared.start_path or prepared.target_path,  # a request chain: the previous request's model
        device,
        needs_ref=objective.needs_reference,
        total_steps=scheduled * len(phases),
        warmup_steps=warmup_steps(method, len(prepared.splits["forget"]), len(phases)),
    )
    engine = engine_cls(settings)
    try:
        regulariser = objective.regulariser(engine, ctx.seed)
        encoder = prepared.encoder()
        tokenizer = prepared.tokenizer()
        sampler = StepSampler({name: len(prepared.splits[name]) for name in TRAIN}, recipe.retain_sampling, ctx.seed)
        checkpoints = LoopCheckpoints(ctx.resume_dir, interval(ctx.compute.checkpoint_every, steps))
        first, reported = checkpoints.restore(engine, sampler)  # after the regulariser kept θ₀
        reporter = ctx.reporter
        for step, done in reported:
            reporter.on_step(step, done)
        for step in range(first, steps):
            start = time.perf_counter()
            global_idx = sampler.take(method.batch_size)
            micro = _micro_batches(
                objective,
                method.batch_size // (engine.world * ctx.compute.grad_accum),
                ctx.compute.grad_accum,
                prepared.splits,
                encoder,
                global_idx,
                engine.rank,
                engine.world,
                device,
            )
            logs: dict[str, float] = {}
            for phase in phases:
                reg = regulariser if phase.regularise else None
                logs |= _phase(engine, objective, micro, phase, reg, step)
            logs["loss"] = logs["forget_loss"] + logs.get("retain_loss", 0.0)
            if regulariser is not None:
                logs["loss"] += regulariser.weight * logs["reg"]
            logs["lr"] = engine.lr()
            logs["tokens"] = float(sum(_tokens(b) for b in micro))
            logs["step_time_s"] = time.perf_counter() - start
            logs = engine.all_mean(logs) | {TOTAL_STEPS: steps}
            reported.append((step, logs))
            reporter.on_step(step, logs)
            if step < steps - 1 and reporter.wants_checkpoint(step):
                reporter.on_checkpoint(step, _checkpoint(engine, step, checkpoint_dir, tokenizer))
            if checkpoints.due(step, steps):
                checkpoints.save(step, engine, sampler, reported)
        engine.save(checkpoint_dir, tokenizer)
    finally:
        engine.close()


def steps_run(method: LLMMethod, forget_size: int, scheduled: int, layout: str = "records") -> int:
    """Steps actually taken: the schedule's, or the first ``stop_after_epochs`` epochs of it (the
    layout's value when the spec leaves it None; the learning-rate schedule still spans all
    ``scheduled`` steps)."""
    stop = recipe_for(method, layout).stop_after_epochs
    if stop is None:
        return scheduled
    per_epoch = math.ceil(forget_size / method.batch_size)
    return min(scheduled, max(1, math.ceil(stop * per_epoch)))


def _checkpoint(engine: Engine, step: int, checkpoint_dir: Path, tokenizer) -> nn.Module | Path:
    """The model to evaluate after ``step``: the live one in a plain process, else a saved checkpoint."""
    if isinstance(engine, PlainEngine):
        return engine.model
    path = checkpoint_dir.with_name(f"{checkpoint_dir.name}-{step}")
    engine.save(path, tokenizer)
    return path


def _micro_batches(
    objective: Objective,
    size: int,
    grad_accum: int,
    splits: Splits,
    encoder: Encoder,
    global_idx: dict[str, list[int]],
    rank: int,
    world: int,
    device: torch.device,
) -> list[StepBatches]:
    """This rank's ``grad_accum`` micro-batches of ``size`` items from the step's global batch."""
    out = []
    for m in range(grad_accum):
        lo = (m * world + rank) * size
        pick = {name: idx[lo : lo + size] for name, idx in global_idx.items()}

        def batch(name: str, answers: list[str] | None = None, pick=pick) -> Batch | None:
            if name not in pick:
                return None
            return encoder.records([splits[name][i] for i in pick[name]], answers).to(device)

        answers = objective.forget_answers(pick["forget"])
        relabelled = batch("forget", answers) if answers is not None else None
        forget, retain = batch("forget"), batch("retain")
        assert forget is not None and retain is not None
        out.append(StepBatches(forget, retain, batch("world"), relabelled))
    return out


def _tokens(batches: StepBatches) -> int:
    """Tokens this rank fed through the model for one step's micro-batch."""
    used = [
        batches.relabelled if batches.relabelled is not None else batches.forget,
        batches.retain,
        batches.world,
    ]
    return sum(int(b.attention_mask.sum()) for b in used if b is not None)


def _phase(
    engine: Engine,
    objective: Objective,
    micro: list[StepBatches],
    phase: Phase,
    regulariser: Regulariser | None,
    step: int,
) -> dict[str, float]:
    """Forward/backward over the micro-batches, regulariser gradient at the boundary, one optimizer step."""
    sums: dict[str, float] = defaultdict(float)
    for batches in micro:
        terms = []
        with engine.autocast:
            if phase.forget:
                term = objective.forget_term(engine.model, engine.ref, batches)
                sums["forget_loss"] += term.item() / len(micro)
                terms.append(term)
            if phase.retain:
                term = objective.retain_term(engine.model, batches)
                if term is not None:
                    sums["retain_loss"] += term.item() / len(micro)
                    terms.append(term)
        engine.backward(sum(terms[1:], terms[0]))
        if regulariser is not None and engine.boundary():
            start = time.perf_counter()
            sums["reg"] = regulariser.apply(step)
            sums["reg_time_s"] = time.perf_counter() - start
        engine.step(clip=phase.clip)
    return dict(sums)
