"""Ray Train launcher for families with a per-rank loop (``unlearn_worker`` / ``load_unlearned``).

:func:`unlearn_distributed` runs ``api.unlearn_worker`` on ``exp.compute.workers`` Ray Train workers
(``TorchTrainer``, Ray Train V2; gloo on CPU, nccl on GPU; the family's loop calls
``deepspeed.initialize`` itself on the group Ray made). Rank 0's per-step metrics travel through a
``ray.util.queue.Queue`` and are forwarded to the caller's ``report`` while training runs (so a Tune
trial or ``otu run`` sees them live), with the stored path of each checkpoint the loop wrote for
evaluation (``dynamics.every``: ``<storage>/checkpoint-<step>``, which the evaluation actors read;
on a multi-node cluster the storage must be shared). Every rank writes its part of each checkpoint
into a local directory and hands it to ``ray.train.report``; Ray Train merges the parts into one
checkpoint. The last one is copied into ``checkpoint_dir`` and loaded with ``api.load_unlearned``.
Ray must be initialised.
"""

from __future__ import annotations

import os
import queue as queue_lib
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otu.errors import RunFailed, last_lines
from otu.registry import Reporter, family_api
from otu.spec import Experiment, parse_experiment

POLL_S = 0.5


def unlearn_distributed(
    exp: Experiment, api: Any, cache_dir: Path, report: Reporter, checkpoint_dir: Path
) -> Any:
    """Unlearn with ``exp.compute.workers`` Ray Train workers; return the unlearned model."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    if not ray.is_initialized():
        raise RuntimeError("unlearn_distributed needs an initialised Ray (ray.init) in the caller")
    use_gpu = _use_gpu(exp.compute.device, ray.cluster_resources())
    checkpoint_dir = Path(checkpoint_dir).resolve()
    steps: Queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "experiment": exp.to_dict(),
            "cache_dir": str(Path(cache_dir).resolve()),
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
            name=f"train-{exp.hash}", storage_path=str(checkpoint_dir.parent / "ray-train")
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
            _forward(steps, report, block=True)
        _forward(steps, report, block=False)
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
    prepared = api.prepare(exp, Path(cache_dir))
    return api.load_unlearned(exp, prepared, checkpoint_dir)


def train_loop(config: Mapping[str, Any]) -> None:
    """One Ray Train worker: the family's ``unlearn_worker`` into a local dir, then report it.

    Checkpoints the loop hands to ``report`` for evaluation (``dynamics.every``) go to the run's
    storage through ``ray.train.report`` (every rank its part, merged by Ray); rank 0 then queues
    their stored path beside the step's metrics.
    """
    import ray.train
    from ray.train.collective import barrier

    if not config["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    exp = parse_experiment(config["experiment"])
    api = family_api(exp.task.family)
    steps = config["steps"]
    context = ray.train.get_context()
    rank, storage = context.get_world_rank(), Path(context.get_storage().experiment_fs_path)
    last: dict[str, float] = {}

    def report(step: int, metrics: Mapping[str, float], model: object = None) -> None:
        last.clear()
        last.update({k: float(v) for k, v in metrics.items()})
        stored = None
        if isinstance(model, Path):
            checkpoint = ray.train.Checkpoint.from_directory(model)
            ray.train.report(dict(last), checkpoint=checkpoint, checkpoint_dir_name=model.name)
            barrier()  # every rank's part is in storage
            shutil.rmtree(model, ignore_errors=True)
            stored = str(storage / model.name)
        if rank == 0:
            steps.put((int(step), dict(last), stored))

    with tempfile.TemporaryDirectory(prefix="otu-rank-") as local:
        final = Path(local) / "checkpoint"
        api.unlearn_worker(exp, Path(config["cache_dir"]), report, final)
        ray.train.report(last, checkpoint=ray.train.Checkpoint.from_directory(final))


def _forward(steps, report: Reporter, block: bool) -> None:
    """Pass queued (step, metrics, checkpoint path or None) to ``report``; wait up to POLL_S for the first when ``block``."""
    while True:
        try:
            step, metrics, checkpoint = steps.get(block=block, timeout=POLL_S if block else None)
        except queue_lib.Empty:
            return
        if checkpoint is None:
            report(step, metrics)
        else:
            report(step, metrics, Path(checkpoint))
        block = False


def _use_gpu(device: str, resources: Mapping[str, float]) -> bool:
    if device == "auto":
        return resources.get("GPU", 0) > 0
    return device == "cuda"
