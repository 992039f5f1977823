"""Which items a loop step trains on: each step's global batch of indices into forget, retain and world.

The forget set is a stream reshuffled (seeded) on every pass. Retain and world (``retain_sampling``):

* ``stream``: each its own reshuffled stream, independent of the forget items;
* ``paired`` (the OPT-OUT authors, dataset.py ``CustomDataset``): each cut once to a fixed random
  subset of the forget set's size, ``np.random.default_rng(seed).permutation(n)[:len(forget)]`` —
  what ``datasets``' ``shuffle(seed=seed).select(range(len(forget)))`` keeps — and forget item i
  comes with the i-th item of each subset, in every epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from otu.errors import DataError
from otu.llm.data import TRAIN


class Stream:
    """An endless stream of indices 0…n−1, reshuffled (seeded) on every pass."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: list[int] = []

    def take(self, k: int) -> list[int]:
        while len(self.buffer) < k:
            self.buffer += torch.randperm(self.n, generator=self.generator).tolist()
        out, self.buffer = self.buffer[:k], self.buffer[k:]
        return out

    def state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "buffer": list(self.buffer)}

    def load(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.buffer = list(state["buffer"])


def paired_subset(n: int, size: int, seed: int, split: str) -> list[int]:
    """``size`` of ``n`` indices, as ``datasets.Dataset.shuffle(seed=seed).select(range(size))`` keeps them."""
    if n < size:
        raise DataError(
            f"method.retain_sampling: 'paired' pairs each forget item with its own {split} item, but the "
            f"{split} set has {n} for {size} forget items; give more {split} items or use 'stream'"
        )
    return np.random.default_rng(seed).permutation(n)[:size].tolist()


class StepSampler:
    """The global batch of every step: indices into each non-empty training split (``sizes``)."""

    def __init__(self, sizes: Mapping[str, int], mode: Literal["stream", "paired"], seed: int) -> None:
        self.forget = Stream(sizes["forget"], seed)
        others = [name for name in TRAIN[1:] if sizes.get(name)]
        self.subsets = {n: paired_subset(sizes[n], sizes["forget"], seed, n) for n in others if mode == "paired"}
        self.streams = {n: Stream(sizes[n], seed + TRAIN.index(n)) for n in others if mode == "stream"}

    def take(self, k: int) -> dict[str, list[int]]:
        """The next ``k`` items of every split."""
        forget = self.forget.take(k)
        out = {"forget": forget} | {name: [subset[i] for i in forget] for name, subset in self.subsets.items()}
        return out | {name: stream.take(k) for name, stream in self.streams.items()}

    def state(self) -> dict[str, Any]:
        """Where every stream stands (the paired subsets are fixed by the seed)."""
        return {"forget": self.forget.state()} | {name: s.state() for name, s in self.streams.items()}

    def load(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state`: the next :meth:`take` returns what it would have then."""
        self.forget.load(state["forget"])
        for name, stream in self.streams.items():
            stream.load(state[name])
