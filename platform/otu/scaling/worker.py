"""One rank of a scaling measurement, in a fresh process (a torchrun-style launch).

Each rank joins a gloo (CPU) or NCCL (GPU) process group from ``MASTER_ADDR``/``MASTER_PORT``,
runs the family's per-rank loop ``unlearn_worker`` for the few steps the spec asks for, and writes
what it measured to a JSON file: peak resident memory of this process (``VmHWM``: the high-water
mark of this process image, so nothing of the launching process is counted), the RSS just before
the loop, CUDA's max-allocated bytes on a GPU, and the per-step metrics rank 0 was given.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_MMAP_THRESHOLD = 65536
"""Bytes; ``MALLOC_MMAP_THRESHOLD_`` for the ranks (see :func:`otu.scaling.study.run_study`)."""


def run_rank(rank: int, world: int, rendezvous: str, exp_dict: dict[str, Any], out_dir: str) -> None:
    """Entry point of a spawned rank (the ranks meet at ``rendezvous``, a ``file://`` store of
    :func:`otu.process_group.rendezvous_file`); writes ``out_dir/rank-<rank>.json``."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    import torch
    import torch.distributed as dist

    from otu.family import DistributedUnlearning, StepCallback
    from otu.process_group import init_rank
    from otu.registry import family_api
    from otu.runtime.launch import configure_process
    from otu.spec import parse_experiment

    exp = parse_experiment(exp_dict, check_files=False)
    cuda = exp.compute.device != "cpu" and torch.cuda.is_available()
    configure_process(exp.compute)
    family = family_api(exp.task.family)
    assert isinstance(family, DistributedUnlearning)
    if world > 1 or exp.compute.zero_stage > 0:
        import deepspeed  # noqa: F401  (imported before the baseline RSS is read, whatever the stage)
    if cuda:
        torch.cuda.set_device(rank)  # one GPU per rank, as LOCAL_RANK tells the loop
    if world > 1:
        init_rank("nccl" if cuda else "gloo", rendezvous, rank, world)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps: list[dict[str, float]] = []
    baseline = current_rss_bytes()
    start = time.perf_counter()
    out = Path(out_dir)
    family.unlearn_worker(
        exp.job(), exp.context(StepCallback(lambda step, m: steps.append({"step": step, **m})), out / "checkpoint")
    )
    result = {
        "rank": rank,
        "world": world,
        "wall_s": time.perf_counter() - start,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak_rss_bytes(),
        "gpu_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "steps": steps,
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(result))
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """This process image's peak RSS: Linux ``VmHWM``; elsewhere ``ru_maxrss`` (bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
