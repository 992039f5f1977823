"""Training engines for the unlearning loop: plain PyTorch (one process) or DeepSpeed (ZeRO 0–3).

Both expose the same small surface to :mod:`otu.llm.loop`: ``model`` (call it for forward passes;
``module`` is the model it wraps),
``ref`` (frozen θ₀ = NPO reference, or None), ``backward(loss)``, ``boundary()`` (last micro-batch of
an optimizer step), ``gather(params)`` / ``add_grad(param, g)`` (one tensor at a time, collective
under ZeRO, between backward and step), ``shards`` (the regulariser's access to the fp32 master
weights and gradient partitions, :class:`otu.llm.regulariser.Shards`), ``step(clip)`` (the optimizer
step at a boundary, its gradients clipped to ``max_grad_norm`` unless ``clip`` is False),
``all_mean(x)`` and ``save(dir)``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from otu.llm import lora
from otu.llm.models import load_model, load_options, torch_dtype
from otu.llm.regulariser import LocalShards, split_flat
from otu.llm.spec import LLMJob, LLMMethod
from otu.sections import Compute

SHARD = "model-{:05d}-of-{:05d}.safetensors"
INDEX = "model.safetensors.index.json"
ENGINE_STATE = "engine.pt"
"""A plain engine's state in a loop checkpoint (:mod:`otu.llm.resume`)."""
ENGINE_TAG = "engine"
"""The DeepSpeed checkpoint tag of a loop checkpoint."""


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int = 0):
    """Multiplier of the base lr after ``k`` optimizer steps: :math:`k/w` over ``warmup_steps`` w, then
    linear decay to 0 at ``total_steps`` (HF's ``get_linear_schedule_with_warmup``) or constant."""

    def multiplier(k: int) -> float:
        if k < warmup_steps:
            return k / warmup_steps
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - k) / max(1, total_steps - warmup_steps))

    return multiplier


@dataclass(frozen=True)
class EngineSettings:
    """What either engine is built from."""

    job: LLMJob
    compute: Compute
    model_path: Path
    """The HF checkpoint to unlearn from (θ₀)."""
    device: torch.device
    needs_ref: bool
    """Keep a frozen θ₀ as the reference model (NPO and its kin)."""
    total_steps: int
    """Optimizer steps the learning-rate schedule spans."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up at its start."""


class PlainEngine:
    """One process, no DeepSpeed: AdamW, optional bf16 autocast, grad clipping."""

    rank, world = 0, 1

    def __init__(self, settings: EngineSettings):
        job, compute, device = settings.job, settings.compute, settings.device
        model_path = settings.model_path
        method: LLMMethod = job.method
        self.device = device
        self.grad_accum = compute.grad_accum
        self.max_grad_norm = method.max_grad_norm
        options = load_options(job.model)
        self.lora = method.lora is not None
        self.merged_from = _merged_from(method, model_path, torch.float32, options)
        self.model = _adapted(load_model(model_path, torch.float32, device, **options), method)
        if compute.grad_checkpointing:
            _enable_checkpointing(self.model)
        self.ref = None
        if settings.needs_ref:  # with LoRA θ₀ is the model with its adapters off
            self.ref = (
                lora.Reference(self.model, self.model)
                if self.lora
                else _frozen(load_model(model_path, torch_dtype(compute.precision), device, **options))
            )
        self.optimizer = torch.optim.AdamW(_trainable(self.model), lr=method.lr, weight_decay=method.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(method.lr_schedule, settings.total_steps, settings.warmup_steps)
        )
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if compute.precision == "bf16"
            else contextlib.nullcontext()
        )
        self._micro = 0
        self.shards = LocalShards()

    @property
    def module(self) -> nn.Module:
        """The model's module (what ``model`` wraps, if anything)."""
        return self.model

    def backward(self, loss: Tensor) -> None:
        (loss / self.grad_accum).backward()

    def boundary(self) -> bool:
        return (self._micro + 1) % self.grad_accum == 0

    def gather(self, params: Sequence[nn.Parameter]):
        return contextlib.nullcontext()

    def add_grad(self, param: nn.Parameter, grad: Tensor) -> None:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        param.grad.add_(grad.to(param.grad.dtype))

    def step(self, clip: bool = True) -> None:
        if self.boundary():
            if clip and self.max_grad_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._micro += 1

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def save(self, out_dir: Path, tokenizer) -> None:
        if self.lora:
            lora.save_adapter(self.model, out_dir, tokenizer, self.gather, 0, self.merged_from)
        else:
            save_sharded(self.model, out_dir, tokenizer, self.gather, rank=0, world=1)

    def save_state(self, out_dir: Path) -> None:
        """Trainable weights, optimizer, scheduler and micro-step count (what a restarted loop loads)."""
        trainable = {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}
        state = {
            "weights": trainable,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "micro": self._micro,
        }
        torch.save(state, out_dir / ENGINE_STATE)

    @torch.no_grad()
    def load_state(self, in_dir: Path) -> None:
        state = torch.load(in_dir / ENGINE_STATE, map_location=self.device, weights_only=True)
        params = dict(self.model.named_parameters())
        for name, value in state["weights"].items():
            params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._micro = int(state["micro"])

    def close(self) -> None:
        """Nothing to undo in a plain process."""


def without_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce kernel; call before
    ``deepspeed.init_distributed``.

    DeepSpeed's CPU backend builds it (tens of seconds of C++, redone whenever the install's path
    changes, and a compiler is required) for ``inference_all_reduce`` alone; training never calls
    that, so the op is marked unavailable and the process group's collectives carry everything.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


class DeepSpeedEngine:
    """``deepspeed.initialize`` on an existing process group (Ray Train, torchrun, deepspeed)."""

    def __init__(self, settings: EngineSettings):
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        job, compute, device = settings.job, settings.compute, settings.device
        model_path = settings.model_path
        method: LLMMethod = job.method
        without_shm_comm_op()
        deepspeed.init_distributed(dist_backend=dist.get_backend())  # adopts the existing group
        self.device = device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.grad_accum = compute.grad_accum
        config = ds_config(method, compute, self.world)
        dtype = torch_dtype(compute.precision)
        # must live while models load so that from_pretrained partitions them (ZeRO-3)
        self._hf_ds = HfDeepSpeedConfig(config) if compute.zero_stage == 3 else None
        place = None if compute.zero_stage == 3 else device  # zero.Init placed the partitions
        options = load_options(job.model)
        self.lora = method.lora is not None
        self.merged_from = _merged_from(method, model_path, dtype, options)
        model = _adapted(load_model(model_path, dtype, place, **options), method)
        if compute.grad_checkpointing:
            _enable_checkpointing(model)
        optimizer = torch.optim.AdamW(_trainable(model), lr=method.lr, weight_decay=method.weight_decay)
        schedule = lr_lambda(method.lr_schedule, settings.total_steps, settings.warmup_steps)
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=config,
        )
        self.ref = None
        if settings.needs_ref and self.lora:
            self.ref = lora.Reference(self.model, self.model.module)
        elif settings.needs_ref:
            ref = _frozen(load_model(model_path, dtype, place, **options))
            if compute.zero_stage == 3:  # θ₀ partitioned like the model (no optimizer)
                ref_config = {k: v for k, v in config.items() if k != "gradient_clipping"}
                ref = deepspeed.initialize(model=ref, config=ref_config)[0]
                ref.eval()
            self.ref = ref
        self.autocast = contextlib.nullcontext()
        self.shards = DeepSpeedShards(self.rank, self.world, device)

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def backward(self, loss: Tensor) -> None:
        self.model.backward(loss)

    def boundary(self) -> bool:
        return self.model.is_gradient_accumulation_boundary()

    def gather(self, params: Sequence[nn.Parameter]):
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)

    def add_grad(self, param: nn.Parameter, grad: Tensor) -> None:
        from deepspeed.utils import (
            safe_get_full_grad,
            safe_get_local_grad,
            safe_set_full_grad,
            safe_set_local_grad,
        )

        if hasattr(param, "ds_id"):  # ZeRO-3: add this rank's slice to its gradient partition
            local = safe_get_local_grad(param)
            flat = grad.reshape(-1).to(local.dtype)
            start = min(self.rank * local.numel(), flat.numel())
            part = flat[start : start + local.numel()]
            update = torch.zeros_like(local.reshape(-1))
            update[: part.numel()] = part.to(update.device)
            safe_set_local_grad(param, local + update.view_as(local))
        elif getattr(param, "_hp_grad", None) is not None:  # bf16 optimizer keeps an fp32 buffer
            current = param.get_full_hp_grad()
            param.set_full_hp_grad(current + grad.to(current.dtype))
        else:
            current = safe_get_full_grad(param)
            safe_set_full_grad(param, current + grad.to(current.dtype))

    def step(self, clip: bool = True) -> None:
        with contextlib.nullcontext() if clip else self._unclipped():
            self.model.step()

    @contextlib.contextmanager
    def _unclipped(self):
        """No clipping for one step: DeepSpeed clips in its ZeRO / bf16 optimizer (``clip_grad``) or,
        fp32 without ZeRO, in the engine (the config's ``gradient_clipping``)."""
        config, optimizer = self.model._config, self.model.optimizer
        saved = config.gradient_clipping, getattr(optimizer, "clip_grad", None)
        config.gradient_clipping = 0.0
        if saved[1] is not None:
            optimizer.clip_grad = 0.0
        try:
            yield
        finally:
            config.gradient_clipping = saved[0]
            if saved[1] is not None:
                optimizer.clip_grad = saved[1]

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def save(self, out_dir: Path, tokenizer) -> None:
        if self.lora:
            lora.save_adapter(self.model.module, out_dir, tokenizer, self.gather, self.rank, self.merged_from)
            if self.world > 1:
                dist.barrier()
        else:
            save_sharded(self.model.module, out_dir, tokenizer, self.gather, self.rank, self.world)

    def save_state(self, out_dir: Path) -> None:
        """DeepSpeed's checkpoint (collective): module, ZeRO-partitioned optimizer, scheduler; with
        LoRA the frozen base weights are left out (they are θ₀)."""
        self.model.save_checkpoint(str(out_dir), tag=ENGINE_TAG, save_latest=False, exclude_frozen_parameters=self.lora)

    def load_state(self, in_dir: Path) -> None:
        loaded, _ = self.model.load_checkpoint(
            str(in_dir),
            tag=ENGINE_TAG,
            load_module_strict=not self.lora,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint {ENGINE_TAG!r} in {in_dir}")

    def close(self) -> None:
        """Undo ZeRO-3's process-wide swap of ``torch.nn.functional.linear`` for its memory-efficient
        version (DeepSpeed: it "will persist unless manually reset"), so that models run after
        training (evaluation, the next run in this process) compute as without DeepSpeed."""
        from deepspeed.runtime.zero.partition_parameters import InsertPostInitMethodToModuleSubClasses

        torch.nn.functional.linear = getattr(
            InsertPostInitMethodToModuleSubClasses, "linear_bk", torch.nn.functional.linear
        )


class DeepSpeedShards:
    """The regulariser's access to DeepSpeed's fp32 masters and gradient partitions, one collective
    per bucket each way. ZeRO-3: an all-to-all sends each owner the other ranks' fp32 partitions of
    its tensors, and a second one sends every rank its partition's slice of the owners' gradients,
    so a rank moves 1/W of the bucket. ZeRO-0–2: a bucket buffer into which each rank writes its fp32
    fragment (bf16 / ZeRO-1/2 optimizers) or, with replicated fp32 weights, rank 0 the whole tensor,
    is all-reduced; the gradients likewise, then each rank adds its fragment or full gradient."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    @torch.no_grad()
    def fetch_owned(self, params: Sequence[nn.Parameter], owners: Sequence[int]) -> list[Tensor | None]:
        if hasattr(params[0], "ds_id"):
            return self._partitions_to_owners(params, owners)
        masters = self._all_fp32(params)
        return [w if owner == self.rank else None for w, owner in zip(masters, owners, strict=True)]

    @torch.no_grad()
    def add_owned_grads(self, params: Sequence[nn.Parameter], owners: Sequence[int], grads: Sequence[Tensor]) -> None:
        if hasattr(params[0], "ds_id"):
            self._grads_to_partitions(params, owners, grads)
        else:
            self._add_all(params, owners, grads)

    def _partitions_to_owners(self, params: Sequence[nn.Parameter], owners: Sequence[int]) -> list[Tensor | None]:
        from deepspeed.utils import safe_get_local_fp32_param

        plan = _Exchange.of(params, owners, self.world, self.rank)
        send = _cat([safe_get_local_fp32_param(params[k]).reshape(-1) for k in plan.order], self.device)
        width = plan.sizes[self.rank]
        rows = self._all_to_all(send, plan.sizes, [width] * self.world).view(self.world, width)  # row s: rank s's
        out: list[Tensor | None] = [None] * len(params)
        start = 0
        for k in plan.mine:
            p = params[k]
            out[k] = rows[:, start : start + plan.parts[k]].reshape(-1)[: p.ds_numel].view(p.ds_shape)
            start += plan.parts[k]
        return out

    def _grads_to_partitions(
        self, params: Sequence[nn.Parameter], owners: Sequence[int], grads: Sequence[Tensor]
    ) -> None:
        from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

        plan = _Exchange.of(params, owners, self.world, self.rank)
        width = plan.sizes[self.rank]
        send = torch.empty(self.world, width, dtype=torch.float32, device=self.device)  # row s: to rank s
        start = 0
        for k, grad in zip(plan.mine, grads, strict=True):
            _scatter_rows(grad.reshape(-1), send[:, start : start + plan.parts[k]])
            start += plan.parts[k]
        received = self._all_to_all(send.view(-1), [width] * self.world, plan.sizes)
        for k, part in zip(plan.order, received.split([plan.parts[k] for k in plan.order]), strict=True):
            local = safe_get_local_grad(params[k])
            local.view(-1).add_(part.to(local))
            safe_set_local_grad(params[k], local)

    def _all_to_all(self, send: Tensor, send_sizes: list[int], recv_sizes: list[int]) -> Tensor:
        if self.world == 1:
            return send
        recv = torch.empty(sum(recv_sizes), dtype=send.dtype, device=send.device)
        dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes, input_split_sizes=send_sizes)
        return recv

    def _all_fp32(self, params: Sequence[nn.Parameter]) -> list[Tensor]:
        shapes = [p.shape for p in params]
        flat = torch.zeros(sum(s.numel() for s in shapes), dtype=torch.float32, device=self.device)
        for p, view in zip(params, split_flat(flat, shapes), strict=True):
            mapping = getattr(p, "_hp_mapping", None)
            if mapping is not None:
                address = mapping.lp_fragment_address
                view.view(-1).narrow(0, address.start, address.numel).copy_(mapping.get_hp_fragment().reshape(-1))
            elif not hasattr(p, "_hp_mapping") and self.rank == 0:  # replicated fp32 weights
                view.copy_(p.data)
        if self.world > 1:
            dist.all_reduce(flat)
        return split_flat(flat, shapes)

    def _add_all(self, params: Sequence[nn.Parameter], owners: Sequence[int], grads: Sequence[Tensor]) -> None:
        flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=self.device)
        views = split_flat(flat, [p.shape for p in params])
        mine = [k for k, owner in enumerate(owners) if owner == self.rank]
        for k, grad in zip(mine, grads, strict=True):
            views[k].copy_(grad)
        if self.world > 1:
            dist.all_reduce(flat)
        for p, grad in zip(params, views, strict=True):
            full = grad.reshape(-1)
            if getattr(p, "_hp_grad", None) is not None:  # bf16 optimizer: its fp32 fragment
                _add_fragment(p, full)
            elif p.grad is not None:
                p.grad.add_(grad.to(p.grad.dtype))
            elif getattr(p, "_hp_mapping", None) is not None:  # ZeRO-1/2: its fp32 fragment
                _add_fragment(p, full)

    def all_sum(self, value: Tensor) -> float:
        value = value.to(torch.float64)
        if self.world > 1:
            dist.all_reduce(value)
        return float(value)


@dataclass(frozen=True)
class _Exchange:
    """The ZeRO-3 all-to-alls of one bucket: each tensor's partition size (``parts``), the tensors
    grouped by owner rank (``order``: what every rank sends and receives, in that order), the number
    of partition elements each rank owns (``sizes``), and this rank's own tensors (``mine``)."""

    parts: list[int]
    order: list[int]
    sizes: list[int]
    mine: list[int]

    @classmethod
    def of(cls, params: Sequence[nn.Parameter], owners: Sequence[int], world: int, rank: int) -> _Exchange:
        parts = [p.ds_tensor.numel() for p in params]
        by_owner = [[k for k, owner in enumerate(owners) if owner == r] for r in range(world)]
        sizes = [sum(parts[k] for k in tensors) for tensors in by_owner]
        return cls(parts, [k for tensors in by_owner for k in tensors], sizes, by_owner[rank])


def _cat(tensors: list[Tensor], device: torch.device) -> Tensor:
    return torch.cat([t.to(device) for t in tensors]) if tensors else torch.zeros(0, device=device)


def _scatter_rows(flat: Tensor, rows: Tensor) -> None:
    """Copy ``flat`` into the W×n block ``rows`` row by row (the partitions of ranks 0…W−1) and
    zero the padding after it."""
    width = rows.shape[1]
    full, rest = divmod(flat.numel(), width)
    rows[:full].copy_(flat[: full * width].view(full, width))
    if full < rows.shape[0]:
        rows[full, :rest].copy_(flat[full * width :])
        rows[full, rest:].zero_()
        rows[full + 1 :].zero_()


def _add_fragment(param: nn.Parameter, full: Tensor) -> None:
    """Add this rank's fragment of the flat gradient ``full`` to the optimizer's gradient fragment."""
    mapping = param._hp_mapping
    address = mapping.lp_fragment_address
    fragment = mapping.get_lp_grad_fragment(param._index_in_param_group).view(-1)
    if fragment.numel() == full.numel():  # a full accumulation buffer: only this rank's part counts
        fragment = fragment.narrow(0, address.start, address.numel)
    fragment.add_(full.narrow(0, address.start, address.numel).to(fragment))


def ds_config(method: LLMMethod, compute: Compute, world: int) -> dict:
    zero: dict = {"stage": compute.zero_stage}
    if compute.zero_stage == 3:
        z3 = compute.zero3
        zero |= {
            "stage3_max_live_parameters": z3.max_live_parameters,
            "stage3_prefetch_bucket_size": z3.prefetch_bucket_size,
            "reduce_bucket_size": z3.reduce_bucket_size,
            "stage3_max_reuse_distance": z3.max_reuse_distance,
            "stage3_param_persistence_threshold": z3.param_persistence_threshold,
        }
    offload = compute.offload in ("optimizer", "params")
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    if compute.offload == "params":
        zero["offload_param"] = {"device": "cpu"}
    config: dict = {
        "train_batch_size": method.batch_size,
        "train_micro_batch_size_per_gpu": method.batch_size // (world * compute.grad_accum),
        "gradient_accumulation_steps": compute.grad_accum,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": compute.precision == "bf16"},
        "steps_per_print": 2**31 - 1,
    }
    if offload:  # torch's AdamW steps the offloaded fp32 states (DeepSpeedCPUAdam is a JIT-built op)
        config["zero_force_ds_cpu_optimizer"] = False
    if method.max_grad_norm:
        config["gradient_clipping"] = method.max_grad_norm
    return config


def save_sharded(model: nn.Module, out_dir: Path, tokenizer, gather, rank: int, world: int) -> None:
    """A HF checkpoint written by every rank: tensor i goes to rank ``i % world``'s safetensors shard.

    Tensors are gathered one at a time (collective under ZeRO-3); rank 0 also writes the config,
    the tokenizer and the shard index, so ``from_pretrained(out_dir)`` loads the whole model.
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    named = list(model.named_parameters())
    mine: dict[str, Tensor] = {}
    for i, (name, param) in enumerate(named):
        with gather([param]):
            if i % world == rank:
                mine[name] = param.data.detach().cpu().clone().contiguous()
    owners = [r for r in range(world) if any(i % world == r for i in range(len(named)))]
    files = {r: SHARD.format(k + 1, len(owners)) for k, r in enumerate(owners)}
    if mine:
        save_file(mine, str(out_dir / files[rank]), metadata={"format": "pt"})
    if rank == 0:
        model.config.save_pretrained(out_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        sizes = 0
        weight_map = {}
        for i, (name, param) in enumerate(named):
            weight_map[name] = files[i % world]
            numel = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
            sizes += numel * param.element_size()
        (out_dir / INDEX).write_text(
            json.dumps({"metadata": {"total_size": sizes}, "weight_map": weight_map}, indent=2)
        )
    if world > 1:
        dist.barrier()


Engine = PlainEngine | DeepSpeedEngine


def _adapted(model: nn.Module, method: LLMMethod) -> nn.Module:
    """``model`` with LoRA adapters when ``method.lora`` is set (only they train), else itself."""
    return lora.wrap(model, method.lora) if method.lora is not None else model


def _merged_from(method: LLMMethod, model_path: Path, dtype: torch.dtype, options: dict):
    """A loader of the base model on the CPU when the merged LoRA model is to be saved, else None."""
    if method.lora is None or not method.lora.save_merged:
        return None
    return lambda: load_model(model_path, dtype, "cpu", **options)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _enable_checkpointing(model: nn.Module) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def steps_for(method: LLMMethod, forget_size: int) -> int:
    return method.steps or method.epochs * math.ceil(forget_size / method.batch_size)


def warmup_steps(method: LLMMethod, forget_size: int, phases: int) -> int:
    """Optimizer steps of ``method.warmup_epochs``: open-unlearning's ``int(epochs · n) // batch``
    (src/trainer/__init__.py:33-42) loop steps, times the optimizer steps per loop step."""
    return int(method.warmup_epochs * forget_size) // method.batch_size * phases
