r"""LoRA (via peft) for the unlearning loop: adapters, θ₀ without a second copy, and OPT-OUT's
regulariser on the effective weights with its gradient carried to the adapters.

An adapted linear layer computes with :math:`W = W_0 + sBA` (:math:`W_0` n×d frozen, B n×r, A r×d,
s = α/r). θ₀ is the same model with its adapters disabled, so the NPO reference costs no memory.
With projections U (d×L), :math:`P = WU = W_0U + sB(AU)`: given sort(W₀U) (computed once per
projection set, the only O(L·n·d) term), a step costs O(L·r·(n+d)). With the closed form of
:mod:`otu.ot.regularisers` — :math:`\nabla_W SW = \tfrac{2}{L}RU^\top`, R = P − Q̃ the residual
in the rows' own order — the chain rule gives

.. math::  \nabla_A = s\,B^\top\nabla_W = \tfrac{2s}{L}(B^\top R)\,U^\top ,\qquad
           \nabla_B = s\,\nabla_W A^\top = \tfrac{2s}{L}\,R\,(AU)^\top ,

never forming an n×d matrix. The Euclidean / Manhattan / cosine ablations form ∇_W with their own
closed forms on W₀ + sBA and carry it the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from otu.errors import SpecError
from otu.llm.spec import Lora
from otu.ot import random_projections

Gather = Callable[[Sequence[nn.Parameter]], AbstractContextManager]
AddGrad = Callable[[nn.Parameter, Tensor], None]
ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output head
OUTPUT_HEAD = "lm_head"


def wrap(model: nn.Module, spec: Lora) -> nn.Module:
    """``peft.get_peft_model`` with ``spec`` (:class:`otu.llm.spec.Lora`); only adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        if "target" in str(err).lower():
            raise SpecError(f"method.lora.target_modules: {str(err).splitlines()[0]}") from None
        raise


Layout = Sequence[tuple[str, bool]]
"""A model's module tree for name checks: ``(qualified name, is nn.Linear)`` per module."""


def layout(model: nn.Module) -> list[tuple[str, bool]]:
    """``model``'s :data:`Layout` (e.g. of a model built on the meta device)."""
    return [(name, isinstance(module, nn.Linear)) for name, module in model.named_modules() if name]


def targeted(name: str, target_modules: list[str] | str) -> bool:
    """Whether peft's LoRA adapts module ``name``: a listed name or dotted suffix, or a full match of
    one regex (``peft.tuners.tuners_utils.check_target_module_exists`` without its layer options)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == key or name.endswith(f".{key}") for key in target_modules)


def check_targets(modules: Layout, spec: Lora) -> None:
    """``spec.target_modules`` must name at least one ``nn.Linear`` of the model and nothing else;
    peft's ``"all-linear"`` names every linear layer but the output head."""
    if spec.target_modules == ALL_LINEAR:
        if not any(linear for name, linear in modules if name != OUTPUT_HEAD):
            raise SpecError("method.lora.target_modules: 'all-linear' finds no linear layer below the output head")
        return
    hits = [(name, linear) for name, linear in modules if targeted(name, spec.target_modules)]
    if not any(linear for _, linear in hits):
        names = sorted({name.rsplit(".", 1)[-1] for name, linear in modules if linear})
        raise SpecError(
            f"method.lora.target_modules: {spec.target_modules!r} matches no linear layer of the "
            f"model; its linear layers are named {names}"
        )
    other = [name for name, linear in hits if not linear]
    if other:
        raise SpecError(
            f"method.lora.target_modules: matches non-linear modules {other[:3]} (LoRA here adapts "
            "nn.Linear layers only)"
        )


class Reference(nn.Module):
    """θ₀ of a peft model: its forward with the adapters disabled (no second copy of the weights).

    ``runner`` is what to call (the peft model, or the DeepSpeed engine around it)."""

    def __init__(self, runner: nn.Module, peft_model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_runner", runner)  # not a submodule: no second set of parameters
        object.__setattr__(self, "_peft", peft_model)

    def forward(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._runner(*args, **kwargs)


def is_adapter(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_merged(base: nn.Module, adapter_dir: Path) -> nn.Module:
    """``base`` with the adapter in ``adapter_dir`` merged into its weights (a plain model)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_adapter(peft_model: nn.Module, out_dir: Path, tokenizer, gather: Gather, rank: int, merged_from=None) -> None:
    """The adapter (``adapter_config.json`` + weights) and the tokenizer, written by rank 0; the
    adapter tensors are gathered first (collective under ZeRO-3). ``merged_from``: a function
    loading the base model (on the CPU), to also write the merged model to ``out_dir/merged``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    with gather(params):
        if rank == 0:
            peft_model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
    if rank == 0 and merged_from is not None:
        merged = load_merged(merged_from(), out_dir)
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")


@dataclass
class Adapted:
    """One adapted linear layer: frozen W₀ (n×d), A (r×d), B (n×r) and the scale s = α/r."""

    base: nn.Parameter
    a: nn.Parameter
    b: nn.Parameter
    scale: float


def adapted_layers(peft_model: nn.Module) -> list[Adapted]:
    """The model's LoRA linear layers (default adapter), in module order."""
    from peft.tuners.lora import Linear as LoraLinear

    out = []
    for module in peft_model.modules():
        if isinstance(module, LoraLinear) and "default" in module.lora_A:
            out.append(
                Adapted(
                    base=module.base_layer.weight,
                    a=module.lora_A["default"].weight,
                    b=module.lora_B["default"].weight,
                    scale=float(module.scaling["default"]),
                )
            )
    return out


@torch.no_grad()
def lowrank_sw(
    a: Tensor, b: Tensor, scale: float, w0u: Tensor, w0u_sorted: Tensor, projections: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """SW(W₀ + sBA, W₀) and its gradients w.r.t. A and B from W₀U and sort(W₀U) (module docstring).

    Returns (value, ∇_A, ∇_B) in A's and B's shapes and dtypes.
    """
    u = projections
    n_dirs = u.shape[1]
    au = a.to(u.dtype) @ u  # (r, L)
    proj = w0u + scale * (b.to(u.dtype) @ au)  # P = W U, (n, L)
    proj_sorted, rank = torch.sort(proj, dim=0)
    gap = proj_sorted - w0u_sorted  # P − Q̃ in sorted order
    value = gap.square().sum() / n_dirs
    residual = torch.empty_like(proj).scatter_(0, rank, gap)  # R in the rows' own order
    coef = 2.0 * scale / n_dirs
    grad_a = (b.to(u.dtype).T @ residual) @ u.T * coef
    grad_b = residual @ au.T * coef
    return value, grad_a.to(a.dtype), grad_b.to(b.dtype)


@dataclass
class LoraRegulariser:
    """OPT-OUT's λ·Σ D(W₀ + sBA, W₀) over the adapted layers, added to the adapters' gradients.

    Same surface as :class:`otu.llm.regulariser.ParameterRegulariser`; tensors not adapted equal θ₀
    and add nothing. Without ``resample`` one projection set per layer is drawn and W₀U, sort(W₀U)
    are cached (W₀ is gathered once); with it W₀U is recomputed every step (O(L·n·d)).
    """

    kind: str
    weight: float
    layers: list[Adapted]
    gather: Gather
    add_grad: AddGrad
    n_projections: int = 100
    resample: bool = True
    seed: int = 0
    _cache: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict, init=False)

    def apply(self, step: int) -> float:
        """Add ``weight``·∇D to every adapter's gradient; return Σ D (unweighted)."""
        total = 0.0
        for index, layer in enumerate(self.layers):
            need_base = self.kind != "wasserstein" or index not in self._cache or self.resample
            tensors = [layer.a, layer.b, *([layer.base] if need_base else [])]
            with self.gather(tensors):
                value, grad_a, grad_b = self._value_and_grads(index, step, layer)
            total += float(value)
            if self.weight:
                self.add_grad(layer.a, grad_a.mul_(self.weight))
                self.add_grad(layer.b, grad_b.mul_(self.weight))
        return total

    def _value_and_grads(self, index: int, step: int, layer: Adapted) -> tuple[Tensor, Tensor, Tensor]:
        a, b = layer.a.data.float(), layer.b.data.float()
        if self.kind != "wasserstein":
            from otu.llm.regulariser import PLAIN

            w0 = layer.base.data.float()
            value, grad_w = PLAIN[self.kind](w0 + layer.scale * (b @ a), w0)
            return value, layer.scale * (b.T @ grad_w), layer.scale * (grad_w @ a.T)
        if index not in self._cache or self.resample:
            from otu.llm.regulariser import projection_seed

            seed = projection_seed(self.seed, step if self.resample else 0, index)
            u = random_projections(a.shape[1], self.n_projections, seed, a.device, torch.float32)
            w0u = layer.base.data.to(u.dtype) @ u  # the one O(L·n·d) product
            self._cache[index] = (u, w0u, torch.sort(w0u, dim=0).values)
        u, w0u, w0u_sorted = self._cache[index]
        return lowrank_sw(a, b, layer.scale, w0u, w0u_sorted, u)
