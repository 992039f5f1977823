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
from otu.llm import evaluation
from otu.llm.data import Splits, load_splits, read_splits, write_splits
from otu.llm.loop import rank_and_world, run_worker
from otu.llm.models import (
    build_tiny_model,
    corpus,
    finetune,
    load_model,
    load_tokenizer,
    resolve_device,
    torch_dtype,
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
    prompt: str
    max_length: int
    device: torch.device
    dtype: torch.dtype
    _models: dict[str, nn.Module] = field(default_factory=dict)
    _stats: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    _tokenizer: Any = None

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.target_path)
        return self._tokenizer

    def encoder(self) -> Encoder:
        return Encoder(self.tokenizer(), self.prompt, self.max_length)

    def model(self, name: str) -> nn.Module:
        if name not in self._models:
            path = self.target_path if name == "original" else self.oracle_path
            self._models[name] = load_model(path, self.dtype, self.device)
        return self._models[name]

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
        prompt=exp.task.data.prompt,
        max_length=exp.task.data.max_length,
        device=resolve_device(exp.compute.device),
        dtype=torch_dtype(exp.compute.precision),
    )


def _build(exp: Experiment, tmp: Path, root: Path) -> None:
    """Splits, tokenizer, target and oracle models into ``tmp`` (renamed to ``root`` when done)."""
    data, spec = exp.task.data, exp.task.model
    splits = load_splits(data, exp.seed)
    write_splits(splits, tmp / "splits.json")
    device = resolve_device(exp.compute.device)
    if spec.tiny is not None:
        everything = [r for split in splits.values() for r in split]
        tokenizer = train_tokenizer(corpus(everything, data.prompt), spec.tiny.vocab)
    else:
        tokenizer = load_tokenizer(spec.path)
    encoder = Encoder(tokenizer, data.prompt, data.max_length)
    logs: dict[str, list[float]] = {}

    def base() -> nn.Module:
        if spec.tiny is not None:
            return build_tiny_model(spec.tiny, tokenizer, data.max_length, exp.seed)
        return load_model(spec.path, torch.float32, device)

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
        target = fit("target", splits["forget"] + splits["retain"] + splits["world"])
        oracle: Path | None = fit("retain_only", splits["retain"] + splits["world"])
    else:
        target = Path(spec.path).resolve()
        oracle = Path(spec.retain_path).resolve() if spec.retain_path else None
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


def load_unlearned(exp: Experiment, prepared: Prepared, checkpoint_dir: Path) -> nn.Module:
    return load_model(Path(checkpoint_dir), prepared.dtype, prepared.device)


def unlearn(
    exp: Experiment, prepared: Prepared, report: Reporter, checkpoint_dir: Path
) -> nn.Module:
    run_worker(exp, prepared, report, Path(checkpoint_dir))
    return load_unlearned(exp, prepared, checkpoint_dir)


def evaluate(exp: Experiment, prepared: Prepared, model: nn.Module) -> dict[str, float]:
    stats = prepared.stats(model, exp.eval)
    oracle = prepared.stats(prepared.model("retrained"), exp.eval) if prepared.oracle_path else None
    return evaluation.metrics(stats, oracle)


def plots(
    exp: Experiment, prepared: Prepared, models: dict[str, nn.Module], out_dir: Path
) -> list[Path]:
    stats = {name: prepared.stats(model, exp.eval) for name, model in models.items()}
    return write_plots(stats, out_dir)
