"""How an experiment's unlearning runs, chosen in one place by ``compute`` and the environment.

* :class:`InProcess` — the family's ``unlearn`` in this process (plain PyTorch, or DeepSpeed on a
  one-rank group when ``compute.zero_stage > 0``: the family's loop decides);
* :class:`ProcessGroup` — this process is one rank of a group a launcher made (``torchrun`` or
  ``deepspeed`` set ``WORLD_SIZE``): every rank runs the family's ``unlearn_worker``; rank 0 writes
  the run (:func:`main`, ``python -m otu.runtime.launch``);
* :class:`RayTrain` — ``compute.workers > 1`` under ``otu run``/``otu sweep``: Ray Train workers
  (:mod:`otu.runtime.train`, imported only then).

Whatever the launcher, :func:`otu.runtime.experiment.run_experiment` writes the run's outputs. An
attack that trains the model (:class:`otu.family.LaunchedAttacks`, LLM relearning) runs through the
same launcher as the unlearning (``attack``): a run of the family's loop on the same ranks.

    torchrun --nproc_per_node 2 -m otu.runtime.launch SPEC --out DIR [--set key=value ...]
    deepspeed --num_gpus 8 -m otu.runtime.launch SPEC --out DIR
    python -m otu.runtime.launch SPEC --out DIR          # one process
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from otu.cli_args import add_overrides
from otu.errors import OtuError, SpecError
from otu.family import DistributedUnlearning, Family, LaunchedAttacks, RunContext
from otu.registry import family_api
from otu.sections import Compute
from otu.spec import Experiment, load_experiment


@dataclass(frozen=True)
class AttackRun:
    """One launched attack: the family's attack ``label`` on ``model`` (saved in ``checkpoint``, or
    None: a reference model the family loads itself)."""

    label: str
    model: str
    checkpoint: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "model": self.model,
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AttackRun:
        path = raw["checkpoint"]
        return cls(raw["label"], raw["model"], None if path is None else Path(path))

    def work(self, api: LaunchedAttacks, exp: Experiment, ctx: RunContext) -> None:
        """This rank's part of the run."""
        api.attack_worker(exp.job(), self.label, self.model, self.checkpoint, ctx)


class Launcher(Protocol):
    def unlearn(self, api: Family, exp: Experiment, prepared: Any, ctx: RunContext) -> Any:
        """Run the family's unlearning for ``exp``; return the unlearned model."""

    def attack(self, api: LaunchedAttacks, exp: Experiment, prepared: Any, ctx: RunContext, run: AttackRun) -> Any:
        """Run ``run`` as this launcher runs the unlearning (its model saved to ``ctx.checkpoint_dir``);
        return the attacked model."""


def _load_attacked(api: LaunchedAttacks, exp: Experiment, prepared: Any, ctx: RunContext, run: AttackRun) -> Any:
    if ctx.checkpoint_dir is None:
        raise RuntimeError("a launched attack needs ctx.checkpoint_dir")
    return api.load_attacked(exp.job(), prepared, run.model, run.checkpoint, ctx.checkpoint_dir)


class InProcess:
    def unlearn(self, api: Family, exp: Experiment, prepared: Any, ctx: RunContext) -> Any:
        return api.unlearn(exp.job(), prepared, ctx)

    def attack(self, api: LaunchedAttacks, exp: Experiment, prepared: Any, ctx: RunContext, run: AttackRun) -> Any:
        run.work(api, exp, ctx)
        return _load_attacked(api, exp, prepared, ctx, run)


@dataclass(frozen=True)
class ProcessGroup:
    """This process is one rank of a launcher-made group; call on every rank."""

    rank: int
    world: int

    def unlearn(self, api: Family, exp: Experiment, prepared: Any, ctx: RunContext) -> Any:
        family = _distributed(api, exp)
        family.unlearn_worker(exp.job(), ctx)
        if ctx.checkpoint_dir is None:
            raise RuntimeError("a process-group run needs ctx.checkpoint_dir")
        return family.load_unlearned(exp.job(), prepared, ctx.checkpoint_dir) if self.rank == 0 else None

    def attack(self, api: LaunchedAttacks, exp: Experiment, prepared: Any, ctx: RunContext, run: AttackRun) -> Any:
        """Rank 0 (the run's writer) sends ``run`` to the other ranks (:func:`serve_attacks`), then all
        run it; every rank writes its part into the same ``ctx.checkpoint_dir``."""
        _send(run.to_dict() | {"out": str(ctx.checkpoint_dir)})
        run.work(api, exp, ctx)
        return _load_attacked(api, exp, prepared, ctx, run)


def _send(message: dict[str, Any] | None) -> None:
    import torch.distributed as dist

    dist.broadcast_object_list([message], src=0)


def serve_attacks(api: Family, exp: Experiment) -> None:
    """A rank other than 0, after its unlearning: run every attack rank 0 sends until it sends None
    (the run is written)."""
    import torch.distributed as dist

    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        assert isinstance(api, LaunchedAttacks)
        run = AttackRun.from_dict(box[0])
        run.work(api, exp, exp.context(checkpoint_dir=Path(box[0]["out"])))


class RayTrain:
    """``compute.workers`` Ray Train workers; Ray must be initialised."""

    def unlearn(self, api: Family, exp: Experiment, prepared: Any, ctx: RunContext) -> Any:
        from otu.runtime.train import unlearn_distributed

        return unlearn_distributed(exp, _distributed(api, exp), prepared, ctx)

    def attack(self, api: LaunchedAttacks, exp: Experiment, prepared: Any, ctx: RunContext, run: AttackRun) -> Any:
        from otu.runtime.train import train_distributed

        train_distributed(exp, ctx, run.to_dict())
        return _load_attacked(api, exp, prepared, ctx, run)


def launcher_for(exp: Experiment) -> Launcher:
    """The launcher ``exp.compute`` and the environment (``WORLD_SIZE``/``RANK``) call for."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if world != exp.compute.workers:
            raise SpecError(f"compute.workers: is {exp.compute.workers} but the launcher started {world} ranks")
        return ProcessGroup(int(os.environ.get("RANK", "0")), world)
    return RayTrain() if exp.compute.workers > 1 else InProcess()


def configure_process(compute: Compute) -> None:
    """Settings every process of a run needs before torch or DeepSpeed start work: the thread
    pools, DeepSpeed's accelerator when the run is on CPU, and no per-file bars from Hugging Face
    (``Loading weights``, ``Writing model shards``: otu's phases say what is loading)."""
    import torch
    from threadpoolctl import threadpool_limits

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:  # imported already (the driver's checks): switch them off there
        sys.modules["transformers"].utils.logging.disable_progress_bar()

    torch.set_num_threads(compute.threads)
    threadpool_limits(compute.threads)
    if compute.device == "cpu" or (compute.device == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _distributed(api: Family, exp: Experiment) -> DistributedUnlearning:
    if not isinstance(api, DistributedUnlearning):
        raise SpecError(
            f"compute.workers: the {exp.task.family} family unlearns in one process (got {exp.compute.workers})"
        )
    return api


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m otu.runtime.launch`` on every rank of a torchrun/deepspeed group."""
    import torch
    import torch.distributed as dist

    from otu.runtime.experiment import resume_dir, run_experiment

    parser = argparse.ArgumentParser(prog="python -m otu.runtime.launch", description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    add_overrides(parser)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed's
    args = parser.parse_args(argv)
    try:
        exp = load_experiment(args.spec, args.overrides)
        launcher = launcher_for(exp)
    except OtuError as err:
        print(f"otu: error: {err}", file=sys.stderr)
        return 2
    configure_process(exp.compute)
    api = family_api(exp.task.family)
    out = args.out.resolve()
    if isinstance(launcher, ProcessGroup):
        cuda = exp.compute.device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if isinstance(launcher, ProcessGroup) and launcher.rank != 0:
            ctx = exp.context(checkpoint_dir=out / "checkpoint", resume_dir=resume_dir(out, exp))
            _distributed(api, exp).unlearn_worker(exp.job(), ctx)
            serve_attacks(api, exp)
        else:
            result = run_experiment(exp, out, launcher=launcher, phase=lambda name: print(name, flush=True))
            if isinstance(launcher, ProcessGroup):
                _send(None)  # the other ranks' serve_attacks ends
            print(json.dumps(result.metrics["unlearned"]), flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
