"""Data splits plus the original model (all training data) and the retain-only oracle, trained once
per (seed, task.data, task.model) and cached on disk under ``cache_dir/vision-<hash>``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from otu.cache import cached_dir
from otu.spec import content_hash
from otu.vision.data import Splits, make_splits
from otu.vision.models import build_model
from otu.vision.train import train_classifier

if TYPE_CHECKING:
    from otu.spec import Experiment
    from otu.vision.spec import VisionModel

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


def cache_key(exp: Experiment) -> str:
    """Hash of what the cached models depend on: the seed, ``task.data`` (with the file's bytes),
    ``task.model``."""
    data = exp.task.data.model_dump(mode="json")
    if data["source"] == "file":
        data["file_sha256"] = _file_digest(Path(data["path"]))
    return content_hash(
        {"seed": exp.seed, "data": data, "model": exp.task.model.model_dump(mode="json")}
    )


def prepare(exp: Experiment, cache_dir: Path) -> Prepared:
    """Build the splits; load the two reference models from the cache or train and cache them."""
    splits = make_splits(exp.task.data, exp.seed)  # type: ignore[arg-type]
    spec: VisionModel = exp.task.model  # type: ignore[assignment]
    _, channels, height, _ = splits.images.shape

    def new_model() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(exp.seed)
            return build_model(spec.arch, splits.num_classes, channels, height, spec.width)

    path = Path(cache_dir) / f"vision-{cache_key(exp)}"
    cached_dir(path, lambda tmp: _train_references(splits, new_model, spec, exp.seed, tmp))
    models = {}
    for name, file in MODEL_FILES.items():
        model = new_model()
        model.load_state_dict(torch.load(path / file, weights_only=True))
        models[name] = model.eval()
    return Prepared(splits, models["original"], models["retrained"], new_model, path)


def train_fresh(prepared: Prepared, spec: VisionModel, part: str, seed: int) -> nn.Module:
    """A fresh model trained with ``spec``'s recipe on a split part (``train`` or ``retain``)."""
    return _fit(prepared.new_model, prepared.splits, spec, part, seed)


def _fit(
    new_model: Callable[[], nn.Module], splits: Splits, spec: VisionModel, part: str, seed: int
) -> nn.Module:
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


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
