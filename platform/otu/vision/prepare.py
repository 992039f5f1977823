"""Data splits plus the original model (all training data) and the retain-only oracle, trained once
per (seed, task.data, task.model) and cached on disk under ``cache_dir/vision-<hash>``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from otu.cache import cached_dir, content_hash, file_digest
from otu.classifiers.models import build_model
from otu.classifiers.train import train_classifier
from otu.family import RunContext
from otu.vision.data import Splits, make_splits
from otu.vision.spec import VisionJob, VisionModel

MODEL_FILES = {"original": "original.pt", "retrained": "retrained.pt"}


@dataclass
class Prepared:
    """What every trial of one (seed, data, model) setting shares."""

    splits: Splits
    original: nn.Module
    retrained: nn.Module
    new_model: Callable[[], nn.Module]
    """A fresh, seeded, untrained model of the spec's architecture."""
    cache_path: Path
    seed: int

    @property
    def cache_id(self) -> str:
        """The cache entry of the original and oracle (the platform keys their metrics with it)."""
        return self.cache_path.name


def cache_key(job: VisionJob, seed: int) -> str:
    """Hash of what the cached models depend on: the seed, ``task.data`` (with the file's bytes),
    ``task.model``."""
    data = job.data.model_dump(mode="json")
    if data["source"] == "file":
        data["file_sha256"] = file_digest(Path(data["path"]))
    return content_hash({"seed": seed, "data": data, "model": job.model.model_dump(mode="json")})


def prepare(job: VisionJob, ctx: RunContext) -> Prepared:
    """Build the splits; load the two reference models from the cache or train and cache them."""
    seed, spec = ctx.seed, job.model
    splits = make_splits(job.data, seed)
    _, channels, height, _ = splits.images.shape

    def new_model() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_model(spec.arch, splits.num_classes, channels, height, spec.width)

    path = Path(ctx.cache_dir) / f"vision-{cache_key(job, seed)}"
    cached_dir(path, lambda tmp: _train_references(splits, new_model, spec, seed, tmp))
    models = {}
    for name, file in MODEL_FILES.items():
        model = new_model()
        model.load_state_dict(torch.load(path / file, weights_only=True))
        models[name] = model.eval()
    return Prepared(splits, models["original"], models["retrained"], new_model, path, seed)


def train_fresh(prepared: Prepared, spec: VisionModel, part: str) -> nn.Module:
    """A fresh model trained with ``spec``'s recipe on a split part (``train`` or ``retain``)."""
    return _fit(prepared.new_model, prepared.splits, spec, part, prepared.seed)


def _fit(new_model: Callable[[], nn.Module], splits: Splits, spec: VisionModel, part: str, seed: int) -> nn.Module:
    return train_classifier(
        new_model(),
        *splits.part(part),
        epochs=spec.epochs,
        lr=spec.lr,
        batch_size=spec.batch_size,
        weight_decay=spec.weight_decay,
        seed=seed,
    )


def _train_references(
    splits: Splits, new_model: Callable[[], nn.Module], spec: VisionModel, seed: int, out: Path
) -> None:
    for name, part in (("original", "train"), ("retrained", "retain")):
        model = _fit(new_model, splits, spec, part, seed)
        torch.save(model.state_dict(), out / MODEL_FILES[name])
