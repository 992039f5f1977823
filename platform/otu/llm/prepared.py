"""The prepared task of an LLM experiment: ``prepare`` caches, under ``cache_dir/llm-<hash of seed,
task.data, task.model>``, the splits, the target model and the retain-only oracle (fine-tuned on the
layout's sets, :func:`otu.llm.data.finetune_sets`), each a normal HF checkpoint with its tokenizer.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from otu.cache import cached_dir, content_hash
from otu.family import RunContext
from otu.llm import evaluation
from otu.llm.data import Splits, finetune_sets, given, load_splits, read_splits, write_splits
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
from otu.llm.spec import LLMData, LLMEval, LLMJob
from otu.llm.text import Encoder

if TYPE_CHECKING:
    from otu.llm.muse_eval import MuseStats

DONE = "prepared.json"


@dataclass
class Prepared:
    root: Path
    splits: Splits
    target_path: Path
    oracle_path: Path | None
    data: LLMData
    """The ``task.data`` section (prompt format and length)."""
    device: torch.device
    dtype: torch.dtype
    options: dict = field(default_factory=dict)
    """``from_pretrained`` options (:func:`otu.llm.models.load_options`)."""
    start_path: Path | None = None
    """The checkpoint the loop unlearns from (``task.model.start``); None: the target."""
    _models: dict[str, nn.Module] = field(default_factory=dict)
    _stats: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    _tokenizer: Any = None

    def tokenizer(self):
        if self._tokenizer is None:
            trust = self.options.get("trust_remote_code", False)
            self._tokenizer = load_tokenizer(self.target_path, trust)
        return self._tokenizer

    @property
    def cache_id(self) -> str:
        """The cache entry and the checkpoints the reference models load (the platform keys their metrics with it)."""
        return f"{self.root.name}:{self.target_path}:{self.oracle_path}"

    def encoder(self) -> Encoder:
        return encoder_for(self.tokenizer(), self.data)

    def model(self, name: str) -> nn.Module:
        if name not in self._models:
            path = self.target_path if name == "original" else self.oracle_path
            if path is None:
                raise KeyError(f"no {name!r} model: the task has no retain-only oracle")
            self._models[name] = self.load(path)
        return self._models[name]

    def load(self, path: Path) -> nn.Module:
        """A checkpoint in the evaluation precision, on the evaluation device."""
        return load_model(path, self.dtype, self.device, **self.options)

    def on(self, splits: Splits) -> Prepared:
        """The same task evaluated on other splits (an attack's): models shared, statistics apart."""
        return replace(self, splits=splits, _stats=weakref.WeakKeyDictionary())

    def stats(self, model: nn.Module, eval_spec: LLMEval) -> evaluation.ModelStats:
        """Per-item evaluation numbers of ``model``, memoised per model and eval settings."""
        key = content_hash(eval_spec.model_dump(mode="json"))
        per_model = self._stats.setdefault(model, {})
        if key not in per_model:
            model.to(self.device).eval()
            splits = evaluation.cap(self.splits, eval_spec.max_items)
            per_model[key] = evaluation.model_stats(model, self.encoder(), splits, eval_spec, self.data.layout)
        return per_model[key]

    def muse_stats(self, model: nn.Module, eval_spec: LLMEval) -> MuseStats:
        """MUSE's per-item numbers of ``model`` (layout muse), memoised like :meth:`stats`."""
        from otu.llm.muse_eval import muse_stats

        key = "muse-" + content_hash(eval_spec.model_dump(mode="json"))
        per_model = self._stats.setdefault(model, {})
        if key not in per_model:
            model.to(self.device).eval()
            per_model[key] = muse_stats(model, self.encoder(), self.splits, eval_spec)
        return per_model[key]


def cache_key(job: LLMJob, seed: int) -> str:
    return content_hash(
        {
            "layout": 4,  # 3: fine-tuning sets of unique pairs (TOFU: full / retainNN only); 4: layout muse's
            # tiny tokenizer corpus leaves out the requested fold
            **({"chain_splits": 2} if job.data.requests is not None and job.data.layout == "records" else {}),
            # 2: a records chain holds out eval_fraction per neighbour (otu.llm.requests.request_splits)
            "seed": seed,
            "data": job.data.model_dump(mode="json"),
            "model": job.model.model_dump(mode="json"),
        }
    )


def prepare(job: LLMJob, ctx: RunContext) -> Prepared:
    """The cached splits and models of ``job`` (built first if the cache has no valid entry)."""
    root = Path(ctx.cache_dir) / f"llm-{cache_key(job, ctx.seed)}"
    cached_dir(root, lambda tmp: _build(job, ctx, tmp))
    info = json.loads((root / DONE).read_text())
    return Prepared(
        root=root,
        splits=read_splits(root / "splits.json"),
        target_path=root / info["target"],  # relative: a model of the entry; absolute: the spec's
        oracle_path=root / info["oracle"] if info["oracle"] else None,
        data=job.data,
        device=resolve_device(ctx.device),
        dtype=eval_dtype(job.model, ctx.compute),
        options=load_options(job.model),
        start_path=resolve_checkpoint(job.model.start, None, "task.model.start") if job.model.start else None,
    )


def _shared_fit(
    job: LLMJob, ctx: RunContext, tokenizer, records, build, logs: dict[str, list[float]], name: str
) -> Path:
    """The model fine-tuned on ``records`` for every request of a chain (the same tokenizer, seed and
    model settings): ``cache_dir/llm-model-<hash>``, built once by ``build(dir)``."""
    key = content_hash(
        {
            "seed": ctx.seed,
            "tokenizer": sorted(tokenizer.get_vocab().items()),
            "data": job.data.model_dump(mode="json", exclude={"request"}),
            "model": job.model.model_dump(mode="json", exclude={"start"}),
            "records": [r.to_json() for r in records],
        }
    )
    root = Path(ctx.cache_dir) / f"llm-model-{key}"

    def make(tmp: Path) -> None:
        build(tmp)
        (tmp / "finetune_loss.json").write_text(json.dumps(logs.get(name, [])))

    cached_dir(root, make)
    logs[name] = json.loads((root / "finetune_loss.json").read_text())
    return root.resolve()


def _build(job: LLMJob, ctx: RunContext, tmp: Path) -> None:
    """Splits, tokenizer, target and oracle models into ``tmp`` (renamed into place when done)."""
    data, spec = job.data, job.model
    splits = load_splits(data, ctx.seed)
    device = resolve_device(ctx.device)
    options = load_options(spec)
    tiny = spec.tiny
    source = None if tiny is not None else resolve_checkpoint(given(spec.path, "task.model.path"), spec.revision)
    if tiny is not None:
        everything = splits.get("corpus") or [r for split in splits.values() for r in split]  # a chain's own
        tokenizer = train_tokenizer(corpus(everything, data.prompt), tiny.vocab, tiny.chat_template)
    else:
        assert source is not None
        tokenizer = load_tokenizer(source, spec.trust_remote_code)
    if data.layout == "muse":  # raw text → token chunks of max_length (the tokenizer's tokens)
        from otu.llm.muse import chunk_splits

        splits = chunk_splits(splits, tokenizer, data.max_length)
    write_splits(splits, tmp / "splits.json")
    encoder = encoder_for(tokenizer, data)
    logs: dict[str, list[float]] = {}

    def base() -> nn.Module:
        if tiny is not None:
            return build_tiny_model(tiny, tokenizer, data.max_length, ctx.seed)
        assert source is not None
        return load_model(source, torch.float32, device, **options)

    def fit(name: str, records) -> Path:
        if data.requests is not None:  # a request chain: one model per fine-tuning set, shared by its requests
            return _shared_fit(job, ctx, tokenizer, records, lambda out: fit_into(name, records, out), logs, name)
        return fit_into(name, records, tmp / name)

    def fit_into(name: str, records, out: Path) -> Path:
        logs[name] = []
        model = finetune(
            base(),
            encoder,
            records,
            epochs=spec.epochs,
            lr=spec.lr,
            batch_size=spec.batch_size,
            weight_decay=spec.weight_decay,
            seed=ctx.seed,
            device=device,
            log=lambda _epoch, loss: logs[name].append(loss),
        )
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return Path(name)

    if spec.epochs > 0:
        target_set, oracle_set = finetune_sets(splits)
        target = fit("target", target_set)
        oracle: Path | None = fit("retain_only", oracle_set)
    else:
        assert source is not None
        target = source
        oracle = published_oracle(job)
    info = {
        "target": str(target),
        "oracle": str(oracle) if oracle else None,
        "finetune_loss": logs,
    }
    (tmp / DONE).write_text(json.dumps(info, indent=2))


def published_oracle(job: LLMJob) -> Path | None:
    """The retain-only checkpoint of a task with published models (``task.model.epochs`` 0): request k's
    ``task.model.retain_paths[k]`` in a chain that lists one per request (open-unlearning evaluates
    each TOFU forget split against its own retain model, scripts/tofu_unlearn.sh:19-22,59), else
    ``task.model.retain_path`` (None: no oracle)."""
    spec = job.model
    if spec.retain_paths is not None:
        k = job.data.request or 0
        return resolve_checkpoint(spec.retain_paths[k], None, f"task.model.retain_paths.{k}")
    return resolve_checkpoint(spec.retain_path, None, "task.model.retain_path") if spec.retain_path else None
