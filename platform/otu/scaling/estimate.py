r"""Model-state memory estimates per GPU and per node for Llama-shaped models, without a GPU.

ZeRO-2 and ZeRO-3 come from DeepSpeed's pure estimators
(``estimate_zero2_model_states_mem_needs`` → (cpu, gpu) and
``estimate_zero3_model_states_mem_needs`` → (cpu, gpu, largest layer)), which count bytes per
parameter Ψ for 16-bit training with fp32 master weights and Adam: 2 (16-bit params) + 18
(16-bit grads 2, fp32 grads 4, fp32 params 4, Adam m and v 8). DeepSpeed has no estimator for
stages 0 and 1; in the same accounting, on N GPUs:

    ZeRO-0:  (2 + 18)·Ψ             nothing partitioned
    ZeRO-1:  (2 + 6)·Ψ + 12·Ψ / N   fp32 params and Adam states partitioned

OPT-OUT also holds the frozen θ₀ (NPO reference and the SW regulariser's anchor), a 16-bit copy of
the model: 2·Ψ per GPU, or 2·Ψ/N when ZeRO-3 partitions it too, or none on the GPU when the
parameters are offloaded (ZeRO-3 + offload params).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from otu.errors import SpecError

GIB = 1024**3


@dataclass(frozen=True)
class LlamaShape:
    """The architecture numbers that fix a Llama model's parameter count."""

    name: str
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    tied_embeddings: bool = False

    @property
    def params(self) -> int:
        head_dim = self.hidden // self.heads
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_heads * head_dim
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden  # + two RMSNorm weights
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * per_layer + self.hidden

    @property
    def largest_layer_params(self) -> int:
        """The largest single module's parameters (the embedding for Llama-3 shapes)."""
        mlp_matrix = self.hidden * self.intermediate
        return max(self.vocab * self.hidden, mlp_matrix)


PRESETS: dict[str, LlamaShape] = {
    s.name: s
    for s in (
        LlamaShape("llama-3.2-1b", 128256, 2048, 16, 8192, 32, 8, tied_embeddings=True),
        LlamaShape("llama-3.2-3b", 128256, 3072, 28, 8192, 24, 8, tied_embeddings=True),
        LlamaShape("llama-3.1-8b", 128256, 4096, 32, 14336, 32, 8),
        LlamaShape("llama-2-13b", 32000, 5120, 40, 13824, 40, 40),
        LlamaShape("llama-3.1-70b", 128256, 8192, 80, 28672, 64, 8),
    )
}
DEFAULT_MODELS = tuple(PRESETS)


def shape_from_config(path: Path) -> LlamaShape:
    """A shape from a Hugging Face ``config.json`` (or a checkpoint directory holding one)."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise SpecError(f"--models: {path} holds no config.json")
    cfg = json.loads(file.read_text())
    try:
        heads = int(cfg["num_attention_heads"])
        return LlamaShape(
            name=path.name if path.is_dir() else path.parent.name or file.stem,
            vocab=int(cfg["vocab_size"]),
            hidden=int(cfg["hidden_size"]),
            layers=int(cfg["num_hidden_layers"]),
            intermediate=int(cfg["intermediate_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads", heads)),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
    except KeyError as err:
        raise SpecError(f"--models: {file} lacks {err.args[0]!r} (not a Llama-style config)") from None


@dataclass(frozen=True)
class CountOnly:
    """A bare parameter count (``13B``); its largest layer is taken from the nearest preset."""

    name: str
    params: int

    @property
    def largest_layer_params(self) -> int:
        nearest = min(PRESETS.values(), key=lambda s: abs(math.log(s.params / self.params)))
        return nearest.largest_layer_params


def resolve_models(names: list[str]) -> list[LlamaShape | CountOnly]:
    """Presets by name, Hugging Face ``config.json`` paths, or bare counts (``8B``, ``1.5e9``)."""
    out: list[LlamaShape | CountOnly] = []
    for name in names:
        if name in PRESETS:
            out.append(PRESETS[name])
        elif Path(name).exists():
            out.append(shape_from_config(Path(name)))
        elif re.fullmatch(r"[0-9.eE+-]+[kKmMbBtT]?", name.strip()):
            out.append(CountOnly(name.strip(), parse_count(name)))
        else:
            raise SpecError(
                f"--models: {name!r} is not a preset ({', '.join(PRESETS)}), a config.json "
                "path or a parameter count such as 13B"
            )
    return out


@dataclass(frozen=True)
class Estimate:
    model: str
    params: int
    zero_stage: int
    offload: str
    """``none``, ``optimizer`` (states on CPU) or ``params`` (states and parameters on CPU)."""
    gpus_per_node: int
    nodes: int
    gpu_gb: float
    """Model states per GPU (GiB)."""
    cpu_gb: float
    """Host memory per node (GiB)."""
    reference_gpu_gb: float
    """The frozen 16-bit θ₀ per GPU (GiB)."""
    source: str

    @property
    def total_gpu_gb(self) -> float:
        return self.gpu_gb + self.reference_gpu_gb

    def to_row(self) -> dict[str, object]:
        return {**asdict(self), "total_gpu_gb": self.total_gpu_gb}


OFFLOADS_BY_STAGE = {0: ("none",), 1: ("none",), 2: ("none", "optimizer"), 3: ("none", "optimizer", "params")}


def estimate(
    shape_params: int,
    largest_layer: int,
    stage: int,
    offload: str,
    gpus_per_node: int,
    nodes: int,
    model: str = "",
    buffer_factor: float = 1.5,
) -> Estimate:
    """One model-state estimate; ``offload`` must be valid for the stage (see OFFLOADS_BY_STAGE)."""
    if offload not in OFFLOADS_BY_STAGE[stage]:
        raise SpecError(
            f"offload: {offload!r} has no estimate for ZeRO-{stage} (allowed: {', '.join(OFFLOADS_BY_STAGE[stage])})"
        )
    psi, n = shape_params, gpus_per_node * nodes
    if stage in (0, 1):
        gpu = 20 * psi if stage == 0 else 8 * psi + math.ceil(12 * psi / n)
        cpu = psi * 4 * gpus_per_node * buffer_factor  # loading the fp32 checkpoint, per process
        source = "formula"
    elif stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            psi, gpus_per_node, nodes, cpu_offload=offload == "optimizer", additional_buffer_factor=buffer_factor
        )
        source = "deepspeed"
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            psi,
            largest_layer,
            gpus_per_node,
            nodes,
            cpu_offload=offload != "none",
            cpu_offload_params=offload == "params",
            zero_init=True,
            additional_buffer_factor=buffer_factor,
        )
        source = "deepspeed"
    partitioned = 0.0 if offload == "params" else 2 * psi / n  # ZeRO-3 partitions (or offloads) θ₀
    reference = partitioned if stage == 3 else 2.0 * psi
    return Estimate(model, psi, stage, offload, gpus_per_node, nodes, gpu / GIB, cpu / GIB, reference / GIB, source)


def estimate_table(
    models: list[LlamaShape | CountOnly], gpus_per_node: int = 8, nodes: int = 1, stages: tuple[int, ...] = (0, 1, 2, 3)
) -> list[Estimate]:
    """Every (model, stage, valid offload) estimate for one cluster shape."""
    return [
        estimate(m.params, m.largest_layer_params, stage, offload, gpus_per_node, nodes, m.name)
        for m in models
        for stage in stages
        for offload in OFFLOADS_BY_STAGE[stage]
    ]


def parse_count(text: str) -> int:
    """``8B``, ``350M``, ``1.5e9`` → an integer parameter count."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbBtT]?)\s*", text)
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
    try:
        if match is None:
            raise ValueError
        value = float(match.group(1)) * scale[match.group(2).lower()]
    except ValueError:
        raise SpecError(f"parameter count: expected e.g. 8B, 350M or 1.5e9 (got {text!r})") from None
    if value < 1:
        raise SpecError(f"parameter count: must be positive (got {text!r})")
    return int(value)
