"""Checks that what a run or sweep asks for exists, before any trial starts (a request larger than
the cluster would otherwise wait for ever): devices on this machine, CPUs/GPUs on the Ray cluster."""

from __future__ import annotations

from collections.abc import Mapping

from otu.errors import SpecError
from otu.spec import Experiment, Sweep


def check_device(exp: Experiment) -> None:
    """``compute.device: cuda`` needs CUDA in this process (``otu run``)."""
    if exp.compute.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise SpecError(
            f"compute.device: 'cuda' but CUDA is not available here (torch {torch.__version__}); use cpu or auto"
        )


def check_fits(spec: Experiment | Sweep, cluster: Mapping[str, float]) -> None:
    """Raise one :class:`SpecError` naming the request and what ``cluster`` (``ray.cluster_resources()``)
    has when one trial (or run) could never be scheduled."""
    exp = spec.experiment if isinstance(spec, Sweep) else spec
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    have = f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs"
    if exp.compute.device == "cuda" and gpus == 0:
        raise SpecError(f"compute.device: 'cuda' but {have}")
    workers = exp.compute.workers
    per_worker_gpu = 1.0 if exp.compute.device == "cuda" or (exp.compute.device == "auto" and gpus > 0) else 0.0
    if workers > 1:
        # Ray Train workers (DeepSpeed ranks) take compute.threads CPUs each, and a GPU each on CUDA
        need = workers * exp.compute.threads
        if need > cpus:
            raise SpecError(
                f"compute.workers: {workers} workers × {exp.compute.threads} threads need {need} CPUs but {have}"
            )
        if workers * per_worker_gpu > gpus:
            raise SpecError(f"compute.workers: {workers} workers need {workers} GPUs but {have}")
    if isinstance(spec, Sweep) and workers == 1:
        if spec.resources.cpus > cpus:
            raise SpecError(f"resources.cpus: a trial asks for {spec.resources.cpus:g} CPUs but {have}")
        if spec.resources.gpus > gpus:
            raise SpecError(f"resources.gpus: a trial asks for {spec.resources.gpus:g} GPUs but {have}")
    actors = exp.dynamics.pool_size * exp.dynamics.actor_cpus if exp.dynamics.every else 0.0
    if actors > cpus:
        raise SpecError(
            f"dynamics.actor_cpus: {exp.dynamics.pool_size} evaluation actors × {exp.dynamics.actor_cpus:g} "
            f"CPUs need {actors:g} CPUs but {have}"
        )
