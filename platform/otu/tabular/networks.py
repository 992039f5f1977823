"""The digits classifiers of the tabular family, trained once and cached on disk.

``original`` is trained on the whole training split (retain ∪ forget), ``retrained`` — the oracle
of data-point unlearning — on the retain set only, with the same settings and seed. Both are
cached under ``cache_dir/tabular-<hash>/`` where the hash covers the seed, ``task.data`` and
``task.model``; each file is written to a temporary name and renamed, so parallel trials racing
to fill the cache never read a partial file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from otu.cache import content_hash, verified_file, write_verified_file
from otu.classifiers.models import build_model
from otu.classifiers.train import train_classifier
from otu.tabular.spec import TabularData, TabularModel
from otu.tabular.tables import DigitsSplits, digits_splits

NUM_CLASSES = 10
"""Digits."""


def cache_entry(data: TabularData, model: TabularModel, seed: int, cache_dir: Path) -> Path:
    key = content_hash({"seed": seed, "data": data.model_dump(mode="json"), "model": model.model_dump(mode="json")})
    return cache_dir / f"tabular-{key}"


def digits_network(name: str, splits: DigitsSplits, model: TabularModel, seed: int, entry: Path) -> nn.Module:
    """The ``original`` or ``retrained`` classifier (eval mode), from ``entry`` or trained now."""
    net = build_model(model.arch, NUM_CLASSES)
    path = entry / f"{name}.pt"
    if verified_file(path):
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    rows = splits.train if name == "original" else splits.retain
    train_classifier(
        net,
        splits.images[rows],
        splits.labels[rows],
        epochs=model.epochs,
        lr=model.lr,
        batch_size=model.batch_size,
        weight_decay=model.weight_decay,
        seed=seed,
    )
    write_verified_file(path, lambda tmp: torch.save(net.state_dict(), tmp))
    return net.eval()


@dataclass(frozen=True)
class DigitsTask:
    """What data-point unlearning works on: digits splits, the original classifier and the
    retain-only oracle."""

    splits: DigitsSplits
    original: nn.Module
    retrained: nn.Module


def digits_task(data: TabularData, model: TabularModel, seed: int, cache_dir: Path) -> DigitsTask:
    splits = digits_splits(data, seed)
    entry = cache_entry(data, model, seed, cache_dir)
    return DigitsTask(
        splits=splits,
        original=digits_network("original", splits, model, seed, entry),
        retrained=digits_network("retrained", splits, model, seed, entry),
    )


@torch.no_grad()
def embed(net: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate-layer features ``net.features(x)`` of ``images`` (eval mode, in batches)."""
    net.eval()
    return torch.cat([net.features(chunk) for chunk in images.split(batch_size)])
