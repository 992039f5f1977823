"""Loop checkpoints: the unlearning loop's whole state after a step, so that a restarted loop (a Ray
Train worker group after a failure, ``otu run --resume`` after a killed driver) continues as the
same run — the steps it takes after a restart are the ones it would have taken.

A checkpoint ``DIR/step-<k>`` holds the engine's state (:meth:`~otu.llm.engine.PlainEngine.save_state`:
plain state dicts, or DeepSpeed's checkpoint, ZeRO-partitioned, every rank writing its part) and each
rank's loop state (``rank-<r>.pt``: the data streams, the RNGs and the step metrics reported so
far). It is written under a temporary name and renamed once every rank has written its part;
``DIR/latest`` names the newest complete one and is replaced atomically; older ones are then
deleted. The run's θ₀ (NPO's reference, OPT-OUT's W₀) is never read from a checkpoint: the engine
loads it from the original model as on a first start.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from otu.llm.sampling import StepSampler

LATEST = "latest"


class Resumable(Protocol):
    """What a loop checkpoint needs of an engine (collective under DeepSpeed)."""

    rank: int
    world: int

    def save_state(self, out_dir: Path) -> None: ...
    def load_state(self, in_dir: Path) -> None: ...


def interval(every: int | None, steps: int) -> int:
    """Steps between loop checkpoints: ``every``, or a tenth of the run's ``steps`` when None."""
    return max(1, math.ceil(steps / 10)) if every is None else every


class LoopCheckpoints:
    """Loop checkpoints of one run in ``root`` (None: none kept) every ``every`` steps (0: never)."""

    def __init__(self, root: Path | None, every: int) -> None:
        self.root, self.every = root, every

    def due(self, step: int, steps: int) -> bool:
        """Whether to save after ``step`` (never after the last: the final model is saved anyway)."""
        return self.root is not None and self.every > 0 and (step + 1) % self.every == 0 and step < steps - 1

    def latest(self) -> Path | None:
        """The newest complete checkpoint, if any."""
        if self.root is None or not (self.root / LATEST).is_file():
            return None
        path = self.root / (self.root / LATEST).read_text().strip()
        return path if path.is_dir() else None

    def save(self, step: int, engine: Resumable, sampler: StepSampler, reported: list[tuple[int, dict]]) -> None:
        """Save the state after ``step`` and the step metrics ``reported`` so far (collective: every
        rank calls it)."""
        assert self.root is not None
        name = f"step-{step:08d}"
        partial = self.root / f"{name}.partial"
        if engine.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)  # a save a failure cut short
            partial.mkdir(parents=True)
        _barrier(engine.world)
        engine.save_state(partial)
        state = {"step": step, "sampler": sampler.state(), "rng": _rng_state(), "reported": reported}
        torch.save(state, partial / f"rank-{engine.rank}.pt")
        _barrier(engine.world)
        if engine.rank == 0:
            final = self.root / name
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            tmp = self.root / f"{LATEST}.tmp"
            tmp.write_text(name)
            os.replace(tmp, self.root / LATEST)
            for old in self.root.glob("step-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier(engine.world)

    def restore(self, engine: Resumable, sampler: StepSampler) -> tuple[int, list[tuple[int, dict]]]:
        """Load the latest checkpoint into ``engine`` and ``sampler``; the step to run next (0: none)
        and the step metrics reported up to it (the loop reports them again: the platform may not
        have recorded the last ones before a failure, and keeps what it has)."""
        path = self.latest()
        found = torch.tensor([path is not None], dtype=torch.int64)
        if engine.world > 1:  # every rank must agree (the marker might appear between two reads)
            dist.all_reduce(found, op=dist.ReduceOp.MIN)
        if path is None or not bool(found):
            return 0, []
        engine.load_state(path)
        state = torch.load(path / f"rank-{engine.rank}.pt", weights_only=True)  # tensors and plain values only
        sampler.load(state["sampler"])
        _set_rng_state(state["rng"])
        return int(state["step"]) + 1, [(int(k), dict(logs)) for k, logs in state["reported"]]


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
