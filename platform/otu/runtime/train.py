"""Ray Train launcher for families with a per-rank loop (:class:`otu.family.DistributedUnlearning`).

:func:`unlearn_distributed` runs the family's ``unlearn_worker`` on ``exp.compute.workers`` Ray Train workers
(``TorchTrainer``, Ray Train V2; gloo on CPU, nccl on GPU; the family's loop calls
``deepspeed.initialize`` itself on the group Ray made). Rank 0's per-step metrics travel through a
``ray.util.queue.Queue`` and are forwarded to the caller's ``report`` while training runs (so a Tune
trial or ``otu run`` sees them live), with the stored path of each checkpoint the loop wrote for
evaluation (when the caller's reporter wants one: ``<storage>/checkpoint-<step>``, which the evaluation actors read;
on a multi-node cluster the storage must be shared). Every rank writes its part of each checkpoint
into a local directory and hands it to ``ray.train.report``; Ray Train merges the parts into one
checkpoint. The last one is copied into ``ctx.checkpoint_dir`` and loaded with ``load_unlearned``.
A failed worker (killed, its node lost) makes Ray Train restart the group, up to
``compute.max_failures`` times (``FailureConfig``); the restarted loop continues from its latest loop
checkpoint in ``ctx.resume_dir`` (:mod:`otu.llm.resume`), which on a multi-node cluster must be
shared storage like the run's. Ray must be initialised. :func:`train_distributed` runs a launched
attack (:class:`otu.family.LaunchedAttacks`: LLM relearning) the same way, each worker calling the
family's ``attack_worker``.
"""

from __future__ import annotations

import queue as queue_lib
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otu.cache import content_hash
from otu.errors import RunFailed, last_lines
from otu.family import DistributedUnlearning, LaunchedAttacks, Reporter, RunContext
from otu.registry import family_api
from otu.runtime.launch import AttackRun, configure_process
from otu.spec import Experiment, parse_experiment

POLL_S = 0.5


def unlearn_distributed(exp: Experiment, family: DistributedUnlearning, prepared: Any, ctx: RunContext) -> Any:
    """Unlearn with ``exp.compute.workers`` Ray Train workers; return the unlearned model."""
    return family.load_unlearned(exp.job(), prepared, train_distributed(exp, ctx))


def train_distributed(exp: Experiment, ctx: RunContext, attack: Mapping[str, Any] | None = None) -> Path:
    """``exp.compute.workers`` Ray Train workers run the family's loop — its unlearning, or the
    launched attack ``attack`` (an :class:`~otu.runtime.launch.AttackRun`'s ``to_dict``) — and the
    model they saved is copied into ``ctx.checkpoint_dir``, which is returned."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    if not ray.is_initialized():
        raise RuntimeError("unlearn_distributed needs an initialised Ray (ray.init) in the caller")
    if ctx.checkpoint_dir is None:
        raise RuntimeError("unlearn_distributed needs ctx.checkpoint_dir")
    use_gpu = _use_gpu(exp.compute.device, ray.cluster_resources())
    checkpoint_dir = Path(ctx.checkpoint_dir).resolve()
    every = exp.dynamics.every if attack is None and ctx.reporter.wants_checkpoint(0) else 0
    name = f"train-{exp.hash}" if attack is None else f"attack-{exp.hash[:16]}-{content_hash(dict(attack))[:12]}"
    steps: Queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "experiment": exp.to_dict(),
            "cache_dir": str(ctx.cache_dir.resolve()),
            "checkpoint_every": every,
            "resume_dir": None if ctx.resume_dir is None else str(Path(ctx.resume_dir).resolve()),
            "attack": None if attack is None else dict(attack),
            "steps": steps,
            "use_gpu": use_gpu,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=exp.compute.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": exp.compute.threads, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(checkpoint_dir.parent / "ray-train"),
            failure_config=FailureConfig(max_failures=exp.compute.max_failures),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            _forward(steps, ctx.reporter, block=True)
        _forward(steps, ctx.reporter, block=False)
    finally:
        thread.join()
        steps.shutdown()
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, Exception):  # a worker's traceback: its last lines say what went wrong
            raise RunFailed(f"Ray Train workers failed: {last_lines(err)}") from err
        raise err
    result = outcome["result"]
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train run {result.path} reported no checkpoint")
    result.checkpoint.to_directory(str(checkpoint_dir))
    result.checkpoint.filesystem.delete_dir(result.checkpoint.path)  # the run keeps its one copy
    return checkpoint_dir


def train_loop(config: Mapping[str, Any]) -> None:
    """One Ray Train worker: the family's ``unlearn_worker`` (or, for a launched attack, its
    ``attack_worker``) into a local dir, then report it.

    Checkpoints the loop hands to ``on_checkpoint`` for evaluation go to the run's storage through
    ``ray.train.report`` (every rank its part, merged by Ray); rank 0 then queues their stored path
    beside the step's metrics. The experiment is only schema-validated here: the driver checked
    its files.
    """
    import ray.train

    exp = parse_experiment(config["experiment"], check_files=False)
    configure_process(exp.compute)
    family = family_api(exp.task.family)
    assert isinstance(family, DistributedUnlearning)
    context = ray.train.get_context()
    reporter = _WorkerReporter(
        rank=context.get_world_rank(),
        storage=Path(context.get_storage().experiment_fs_path),
        every=int(config["checkpoint_every"]),
        steps=config["steps"],
    )
    with tempfile.TemporaryDirectory(prefix="otu-rank-") as local:
        final = Path(local) / "checkpoint"
        resume = None if config["resume_dir"] is None else Path(config["resume_dir"])
        ctx = RunContext(exp.seed, exp.compute, Path(config["cache_dir"]), reporter, final, resume)
        if config["attack"] is None:
            family.unlearn_worker(exp.job(), ctx)
        else:
            assert isinstance(family, LaunchedAttacks)
            AttackRun.from_dict(config["attack"]).work(family, exp, ctx)
        ray.train.report(reporter.last, checkpoint=ray.train.Checkpoint.from_directory(final))


class _WorkerReporter:
    """A Ray Train worker's reporter: rank 0 queues metrics (and stored checkpoint paths) for the
    driver; checkpoints go to the run's storage through ``ray.train.report``."""

    def __init__(self, rank: int, storage: Path, every: int, steps: Any) -> None:
        self.rank, self.storage, self.every, self.steps = rank, storage, every, steps
        self.last: dict[str, float] = {}

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self.last = {k: float(v) for k, v in metrics.items()}
        if self.rank == 0:
            self.steps.put((int(step), dict(self.last), None))

    def wants_checkpoint(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def on_checkpoint(self, step: int, checkpoint: Any) -> None:
        import ray.train
        from ray.train.collective import barrier

        path = Path(checkpoint)
        ray.train.report(
            dict(self.last), checkpoint=ray.train.Checkpoint.from_directory(path), checkpoint_dir_name=path.name
        )
        barrier()  # every rank's part is in storage
        shutil.rmtree(path, ignore_errors=True)
        if self.rank == 0:
            self.steps.put((int(step), None, str(self.storage / path.name)))


def _forward(steps: Any, reporter: Reporter, block: bool) -> None:
    """Pass queued (step, metrics or None, checkpoint path or None) to ``reporter``; wait up to
    POLL_S for the first when ``block``."""
    while True:
        try:
            step, metrics, checkpoint = steps.get(block=block, timeout=POLL_S if block else None)
        except queue_lib.Empty:
            return
        if metrics is not None:
            reporter.on_step(step, metrics)
        if checkpoint is not None:
            reporter.on_checkpoint(step, Path(checkpoint))
        block = False


def _use_gpu(device: str, resources: Mapping[str, float]) -> bool:
    if device == "auto":
        return resources.get("GPU", 0) > 0
    return device == "cuda"
