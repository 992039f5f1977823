"""Entry points of the LLM family (see :mod:`otu.registry`), plus the multi-worker pair
``unlearn_worker`` / ``load_unlearned`` that :mod:`otu.runtime.train` and :mod:`otu.llm.launch` run.

``prepare`` caches, under ``cache_dir/llm-<hash of seed, task.data, task.model>``, the splits, the
target model (fine-tuned on forget + retain + world) and the retain-only oracle (retain + world),
each a normal HF checkpoint with its tokenizer.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from otu.cache import cached_dir
from otu.llm import evaluation, lora
from otu.llm.data import Splits, all_records, load_splits, read_splits, write_splits
from otu.llm.loop import rank_and_world, run_worker
from otu.llm.models import (
    build_tiny_model,
    corpus,
    encoder_for,
    eval_dtype,
    finetune,
    load_model,
    load_options,
    load_tokenizer,
    resolve_checkpoint,
    resolve_device,
    train_tokenizer,
)
from otu.llm.plots import write_plots
from otu.llm.text import Encoder
from otu.registry import Reporter
from otu.spec import Experiment, content_hash

DONE = "prepared.json"


@dataclass
class Prepared:
    root: Path
    splits: Splits
    target_path: Path
    oracle_path: Path | None
    data: Any
    """The ``task.data`` section (prompt format and length)."""
    device: torch.device
    dtype: torch.dtype
    options: dict = field(default_factory=dict)
    """``from_pretrained`` options (:func:`otu.llm.models.load_options`)."""
    _models: dict[str, nn.Module] = field(default_factory=dict)
    _stats: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    _tokenizer: Any = None

    def tokenizer(self):
        if self._tokenizer is None:
            trust = self.options.get("trust_remote_code", False)
            self._tokenizer = load_tokenizer(self.target_path, trust)
        return self._tokenizer

    def encoder(self) -> Encoder:
        return encoder_for(self.tokenizer(), self.data)

    def model(self, name: str) -> nn.Module:
        if name not in self._models:
            path = self.target_path if name == "original" else self.oracle_path
            self._models[name] = self.load(path)
        return self._models[name]

    def load(self, path: Path) -> nn.Module:
        """A checkpoint in the evaluation precision, on the evaluation device."""
        return load_model(path, self.dtype, self.device, **self.options)

    def stats(self, model: nn.Module, eval_spec) -> evaluation.ModelStats:
        """Per-item evaluation numbers of ``model``, memoised per model and eval settings."""
        key = content_hash(eval_spec.model_dump(mode="json"))
        per_model = self._stats.setdefault(model, {})
        if key not in per_model:
            model.to(self.device).eval()
            splits = evaluation.cap(self.splits, eval_spec.max_items)
            per_model[key] = evaluation.model_stats(model, self.encoder(), splits, eval_spec)
        return per_model[key]


def cache_key(exp: Experiment) -> str:
    return content_hash(
        {
            "layout": 2,  # models named relative to the entry (a cache directory can move)
            "seed": exp.seed,
            "data": exp.task.data.model_dump(mode="json"),
            "model": exp.task.model.model_dump(mode="json"),
        }
    )


def prepare(exp: Experiment, cache_dir: Path) -> Prepared:
    root = Path(cache_dir) / f"llm-{cache_key(exp)}"
    cached_dir(root, lambda tmp: _build(exp, tmp, root))
    info = json.loads((root / DONE).read_text())
    return Prepared(
        root=root,
        splits=read_splits(root / "splits.json"),
        target_path=root / info["target"],  # relative: a model of the entry; absolute: the spec's
        oracle_path=root / info["oracle"] if info["oracle"] else None,
        data=exp.task.data,
        device=resolve_device(exp.compute.device),
        dtype=eval_dtype(exp),
        options=load_options(exp.task.model),
    )


def _build(exp: Experiment, tmp: Path, root: Path) -> None:
    """Splits, tokenizer, target and oracle models into ``tmp`` (renamed to ``root`` when done)."""
    data, spec = exp.task.data, exp.task.model
    splits = load_splits(data, exp.seed)
    write_splits(splits, tmp / "splits.json")
    device = resolve_device(exp.compute.device)
    options = load_options(spec)
    source = None if spec.tiny is not None else resolve_checkpoint(spec.path, spec.revision)
    if source is None:
        everything = [r for split in splits.values() for r in split]
        tokenizer = train_tokenizer(
            corpus(everything, data.prompt), spec.tiny.vocab, spec.tiny.chat_template
        )
    else:
        tokenizer = load_tokenizer(source, spec.trust_remote_code)
    encoder = encoder_for(tokenizer, data)
    logs: dict[str, list[float]] = {}

    def base() -> nn.Module:
        if source is None:
            return build_tiny_model(spec.tiny, tokenizer, data.max_length, exp.seed)
        return load_model(source, torch.float32, device, **options)

    def fit(name: str, records) -> Path:
        logs[name] = []
        model = finetune(
            base(),
            encoder,
            records,
            epochs=spec.epochs,
            lr=spec.lr,
            batch_size=spec.batch_size,
            weight_decay=spec.weight_decay,
            seed=exp.seed,
            device=device,
            log=lambda _epoch, loss: logs[name].append(loss),
        )
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
        return Path(name)

    if spec.epochs > 0:
        target = fit("target", all_records(splits, ("forget", "retain", "world")))
        oracle: Path | None = fit("retain_only", all_records(splits, ("retain", "world")))
    else:
        assert source is not None
        target = source
        oracle = (
            resolve_checkpoint(spec.retain_path, None, "task.model.retain_path")
            if spec.retain_path
            else None
        )
    info = {
        "target": str(target),
        "oracle": str(oracle) if oracle else None,
        "finetune_loss": logs,
    }
    (tmp / DONE).write_text(json.dumps(info, indent=2))


def reference_models(prepared: Prepared) -> dict[str, nn.Module]:
    names = ["original"] + (["retrained"] if prepared.oracle_path is not None else [])
    return {name: prepared.model(name) for name in names}


def unlearn_worker(
    exp: Experiment, cache_dir: Path, report: Reporter, checkpoint_dir: Path
) -> None:
    """One rank of the unlearning run (rank 0 prepares first; the others then read the cache)."""
    rank, world = rank_and_world()
    if world > 1 and rank != 0:
        dist.barrier()
    prepared = prepare(exp, cache_dir)
    if world > 1 and rank == 0:
        dist.barrier()
    run_worker(exp, prepared, report, Path(checkpoint_dir))


def load_unlearned(exp: Experiment, prepared: Prepared, checkpoint: Path) -> nn.Module:
    """The unlearned model: a full checkpoint, or the target with a LoRA adapter merged in."""
    if lora.is_adapter(checkpoint):
        return lora.load_merged(prepared.load(prepared.target_path), Path(checkpoint)).eval()
    return prepared.load(Path(checkpoint))


def unlearn(
    exp: Experiment, prepared: Prepared, report: Reporter, checkpoint_dir: Path
) -> nn.Module:
    run_worker(exp, prepared, report, Path(checkpoint_dir))
    return load_unlearned(exp, prepared, checkpoint_dir)


def evaluate(exp: Experiment, prepared: Prepared, model: nn.Module) -> dict[str, float]:
    stats = prepared.stats(model, exp.eval)
    oracle = prepared.stats(prepared.model("retrained"), exp.eval) if prepared.oracle_path else None
    metrics = evaluation.metrics(stats, oracle)
    if exp.eval.lm_eval is not None:
        from otu.llm.harness import lm_eval_metrics

        max_length = exp.task.data.max_length
        metrics |= lm_eval_metrics(model, prepared.tokenizer(), exp.eval.lm_eval, max_length)
    return metrics


def plots(
    exp: Experiment, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path
) -> list[Path]:
    stats = {name: prepared.stats(model, exp.eval) for name, model in models.items()}
    return write_plots(stats, out_dir)


def outputs(
    exp: Experiment, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path
) -> list[Path]:
    """``generations.jsonl``: per evaluated model and QA item, the question, the reference, the
    greedy generation and its prob / rouge / truth_ratio (the numbers behind the metrics)."""
    splits = evaluation.cap(prepared.splits, exp.eval.max_items)
    lines = [
        json.dumps({"model": name, **row})
        for name, model in models.items()
        for row in evaluation.generation_rows(prepared.stats(model, exp.eval), splits)
    ]
    path = Path(out_dir) / "generations.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return [path]


def load_checkpoint(exp: Experiment, prepared: Prepared, path: str) -> nn.Module:
    """A checkpoint to evaluate (``otu eval --model``): a local directory or a hub id, loaded like
    the target model (``task.model`` options, evaluation precision); a LoRA adapter directory is
    merged into the target model."""
    return load_unlearned(exp, prepared, resolve_checkpoint(path, None, "--model"))
