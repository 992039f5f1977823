"""Checks of an LLM experiment that need more than one section or read files — run at parse time."""

from __future__ import annotations

import json
from pathlib import Path

from otu.errors import SpecError
from otu.llm.data import load_splits
from otu.spec import Experiment

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def check_experiment(exp: Experiment) -> None:
    check_compute(exp)
    model = exp.task.model
    if model.path is not None:
        check_causal_lm(Path(model.path), "model.path")
    if model.retain_path is not None:
        check_causal_lm(Path(model.retain_path), "model.retain_path")
    load_splits(exp.task.data, exp.seed)


def check_compute(exp: Experiment) -> None:
    c = exp.compute
    per_step = c.workers * c.grad_accum
    if exp.method.batch_size % per_step:
        raise SpecError(
            f"method.batch_size: {exp.method.batch_size} is not divisible by compute.workers × "
            f"compute.grad_accum = {per_step}"
        )
    if c.offload == "optimizer" and c.zero_stage < 1:
        raise SpecError("compute.offload: 'optimizer' needs compute.zero_stage >= 1 (got 0)")
    method = exp.method
    if getattr(method, "alternate", False) and not (method.retain_weight or method.world_weight):
        raise SpecError(
            "method.alternate: the second (retain + regulariser) step needs retain_weight or "
            "world_weight > 0 (both are 0)"
        )
    if c.offload == "params" and c.zero_stage != 3:
        raise SpecError(
            f"compute.offload: 'params' needs compute.zero_stage 3 (got {c.zero_stage})"
        )


def check_causal_lm(path: Path, field: str) -> None:
    """A local HF checkpoint directory whose config names a causal-LM architecture, with a tokenizer."""
    if not path.is_dir():
        raise SpecError(f"task.{field}: not a directory: {path} (need a local HF checkpoint)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SpecError(f"task.{field}: {path} has no config.json (not a HF checkpoint)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise SpecError(f"task.{field}: {config_file} is not valid JSON: {err}") from None
    archs = config.get("architectures") or []
    if archs:
        causal = any(a.endswith(CAUSAL_LM_SUFFIXES) for a in archs)
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        causal = config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal:
        raise SpecError(
            f"task.{field}: {path} is not a causal-LM checkpoint (architectures {archs}, "
            f"model_type {config.get('model_type')!r}); need e.g. LlamaForCausalLM"
        )
    if not any(
        (path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        raise SpecError(
            f"task.{field}: {path} has no tokenizer files (tokenizer.json / tokenizer_config.json)"
        )
