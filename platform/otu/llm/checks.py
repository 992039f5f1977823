"""Environment checks of an LLM experiment (files, checkpoints, hub ids, data) and the checks that
need more than the family's sections (compute); :data:`otu.llm.spec.SPEC` names :func:`check`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from otu.errors import SpecError
from otu.family import RunContext
from otu.llm.data import TRAIN, load_splits
from otu.llm.recipe import recipe_for
from otu.llm.sampling import StepSampler
from otu.llm.spec import LLMJob, LLMMethod, LLMModel, LmEval, Retaining
from otu.sections import Compute

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check(job: LLMJob, ctx: RunContext) -> None:
    """What the spec names on this machine: checkpoints (local or fetched config and tokenizer), the
    chat template, lm-eval, LoRA targets, the data and the terms it must feed; run once, in the driver."""
    method: LLMMethod = job.method
    check_compute(method, ctx.compute)
    model = job.model
    if model.path is not None:
        path = checkpoint_files(model.path, model.revision, "model.path")
        check_causal_lm(path, "model.path")
        check_prompts(job, path)
    if model.retain_path is not None:
        check_causal_lm(checkpoint_files(model.retain_path, None, "model.retain_path"), "model.retain_path")
    check_retain_paths(job)
    if job.eval.lm_eval is not None:
        check_lm_eval(job.eval.lm_eval)
    if method.lora is not None:
        from otu.llm.lora import check_targets, layout
        from otu.llm.models import tiny_layout

        check_targets(tiny_layout(model.tiny) if model.tiny else layout(meta_model(model)), method.lora)
    splits = load_splits(job.data, ctx.seed)
    # paired retain / world subsets must fit in their sets
    StepSampler({k: len(splits[k]) for k in TRAIN}, recipe_for(method, job.data.layout).retain_sampling, ctx.seed)
    if not splits["world"] and isinstance(method, Retaining) and method.world_weight:
        raise SpecError(
            "task.data.world: the data has no world training set (TOFU ships none); give a QA or "
            "instruction file, or set method.world_weight: 0"
        )
    if job.data.requests is not None and method.lora is not None:
        raise SpecError("task.data.requests: a request chain unlearns full checkpoints; drop method.lora")
    if job.data.layout == "muse" and job.eval.robustness:
        raise SpecError("eval.robustness: not available with task.data.layout muse (its attacks read QA items)")
    check_attacks(job, splits, ctx.seed)
    from otu.llm.attacks import check_launched  # relearning run by the launcher (LLMFamily.launched_attacks)

    check_launched(job, ctx.compute, splits, ctx.seed)


def check_retain_paths(job: LLMJob) -> None:
    """``task.model.retain_paths``: one causal-LM checkpoint per request of ``task.data.requests``."""
    paths, requests = job.model.retain_paths, job.data.requests
    if paths is None:
        return
    if requests is None or len(paths) != len(requests):
        count = f"{len(requests)} request(s) in task.data.requests" if requests else "no task.data.requests"
        raise SpecError(
            f"task.model.retain_paths: {len(paths)} checkpoint(s) for {count}; give one retain-only oracle per "
            "request, in request order (or one retain_path for a single request)"
        )
    for i, path in enumerate(paths):
        key = f"model.retain_paths.{i}"  # as model.retain_path: the checks name it task.<key>
        check_causal_lm(checkpoint_files(path, None, key), key)


def check_attacks(job: LLMJob, splits, seed: int) -> None:
    """Each ``eval.robustness`` attack has what it needs in the data (a relearn set, items left to
    score, paraphrases), before any work."""
    from otu.llm import attacks

    for attack in job.eval.robustness:
        if attack.attack == "relearn":
            attacks.relearn_split(splits, attack, seed)
        elif attack.attack == "probe":
            attacks.check_probe(splits, attack)


def check_lm_eval(spec: LmEval) -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise SpecError("eval.lm_eval: lm-evaluation-harness is not installed (pip install 'otu[lm-eval]')") from None
    if spec.include_path is not None and not Path(spec.include_path).is_dir():
        raise SpecError(f"eval.lm_eval.include_path: not a directory: {spec.include_path}")


def checkpoint_files(path: str, revision: str | None, field: str) -> Path:
    """A local directory, or the directory of a hub id's config and tokenizer files (fetched, or
    from the HF cache offline) — the weights are downloaded only when the run prepares."""
    local = Path(path).expanduser()
    if local.is_dir() or not HUB_ID.fullmatch(path):
        return local
    from huggingface_hub import hf_hub_download

    try:
        config = Path(hf_hub_download(path, "config.json", revision=revision))
    except Exception as err:  # offline and not cached, unknown id, gated repo, bad revision
        cause = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SpecError(
            f"task.{field}: {path!r} is not a local directory, and the hub id could not be fetched "
            f"or found in the HF cache (revision {revision or 'main'}): {type(err).__name__}: {cause}"
        ) from None
    for name in ("tokenizer_config.json", "tokenizer.json"):
        try:
            hf_hub_download(path, name, revision=revision)
        except Exception:  # tokenizers ship either file; check_causal_lm wants one of them
            continue
    return config.parent


def meta_model(spec: LLMModel):
    """The checkpoint's module structure, weightless (meta device): for checks of module names."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    assert spec.path is not None
    path = checkpoint_files(spec.path, spec.revision, "model.path")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)


def check_prompts(job: LLMJob, path: Path) -> None:
    """The tokenizer's chat template (when used) must carry a question and its answer."""
    from otu.llm.models import encoder_for, load_tokenizer

    encoder_for(load_tokenizer(path, job.model.trust_remote_code), job.data)


def check_compute(method: LLMMethod, c: Compute) -> None:
    per_step = c.workers * c.grad_accum
    if method.batch_size % per_step:
        raise SpecError(
            f"method.batch_size: {method.batch_size} is not divisible by compute.workers × "
            f"compute.grad_accum = {per_step}"
        )
    if c.offload == "optimizer" and c.zero_stage < 1:
        raise SpecError("compute.offload: 'optimizer' needs compute.zero_stage >= 1 (got 0)")
    if c.offload == "params" and c.zero_stage != 3:
        raise SpecError(f"compute.offload: 'params' needs compute.zero_stage 3 (got {c.zero_stage})")


def check_causal_lm(path: Path, field: str) -> None:
    """A local HF checkpoint directory whose config names a causal-LM architecture, with a tokenizer."""
    if not path.is_dir():
        raise SpecError(f"task.{field}: not a directory: {path} (need a local HF checkpoint or a hub id)")
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
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise SpecError(f"task.{field}: {path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
