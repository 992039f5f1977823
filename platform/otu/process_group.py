"""torch.distributed process groups that never pick a TCP port for someone else to bind.

Choosing a port by binding port 0, closing it and handing the number to ``init_process_group`` races
with every other process on the machine (CI saw ``EADDRINUSE``). So:

* one rank needs no rendezvous at all: :func:`init_single_rank` uses an in-memory ``HashStore``;
* ranks spawned on one machine meet in a ``FileStore`` (:func:`rendezvous_file`, then
  :func:`init_rank` in each rank); gloo / NCCL then open their own connections on ports they bind
  themselves;
* across machines, launchers (``torchrun``, ``deepspeed``, Ray Train) own the rendezvous.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.distributed as dist


def init_single_rank(backend: str) -> None:
    """A one-rank group on an in-memory store (no port, no file)."""
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def rendezvous_file(directory: str | Path | None = None) -> str:
    """A fresh ``file://`` init method (a store file in a new private directory under ``directory``,
    default the system temp dir) for one launch of ranks on this machine."""
    return (Path(tempfile.mkdtemp(prefix="otu-rendezvous-", dir=directory)) / "store").as_uri()


def init_rank(backend: str, init_method: str, rank: int, world: int) -> None:
    """Join the group of ``world`` ranks meeting at ``init_method`` (from :func:`rendezvous_file`)."""
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
