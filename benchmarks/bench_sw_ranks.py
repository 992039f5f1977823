"""Per-rank time of OPT-OUT's SW regulariser with 1 vs W DeepSpeed workers (the work is shared).

    python benchmarks/bench_sw_ranks.py --size small --workers 1 2 --zero-stage 3 --repeats 5

Each configuration spawns W gloo processes (CPU, one torch thread each) that wrap a randomly
initialised Llama of ``--size`` (the sizes of ``bench_optout_step.py``) in DeepSpeed ZeRO-``stage``
(every tensor partitioned under ZeRO-3), run one backward, build the family's
:class:`otu.llm.regulariser.ParameterRegulariser` (L = 100, resampled projections, as OPT-OUT's
default) and time ``apply(step)`` ``--repeats`` times after one warm-up call. Per rank: the median
wall and CPU time of ``apply``, and the CPU time of its two collectives (bringing each owner the fp32
masters of its tensors, bringing every rank its partition's part of the gradients); the rest is the
rank's own SW values and gradients. A step waits for the slowest rank, so the table reports the
maximum over ranks and the speed-up of W workers over one. On a shared machine wall time follows the
load; CPU time is each rank's own work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.multiprocessing as mp
from bench_optout_step import SIZES
from torch import Tensor, nn

from otu.llm.regulariser import Shards
from otu.process_group import init_rank, rendezvous_file

T = TypeVar("T")


class Timed:
    """The engine's shards, with the CPU time spent in their collectives added up."""

    def __init__(self, shards: Shards) -> None:
        self.shards, self.rank, self.world, self.cpu = shards, shards.rank, shards.world, 0.0

    def _timed(self, fn: Callable[..., T], *args: Any) -> T:
        start = time.process_time()
        out = fn(*args)
        self.cpu += time.process_time() - start
        return out

    def fetch_owned(self, params: Sequence[nn.Parameter], owners: Sequence[int]) -> list[Tensor | None]:
        return self._timed(self.shards.fetch_owned, params, owners)

    def add_owned_grads(self, params: Sequence[nn.Parameter], owners: Sequence[int], grads: Sequence[Tensor]) -> None:
        self._timed(self.shards.add_owned_grads, params, owners, grads)

    def all_sum(self, value: Tensor) -> float:
        return self._timed(self.shards.all_sum, value)


def worker(rank: int, world: int, rendezvous: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "DS_ACCELERATOR": "cpu",
        }
    )
    torch.set_num_threads(1)
    init_rank("gloo", rendezvous, rank, world)
    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    from otu.llm.engine import DeepSpeedShards, without_shm_comm_op
    from otu.llm.regulariser import ParameterRegulariser

    without_shm_comm_op()

    layers, hidden, heads, intermediate, vocab = SIZES[args.size]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    zero = {"stage": args.zero_stage}
    if args.zero_stage == 3:
        zero |= {"stage3_param_persistence_threshold": 0}
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
        config={
            "train_batch_size": world,
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
        },
    )
    ids = torch.arange(16).reshape(1, 16)
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    params = [p for p in engine.module.parameters() if p.requires_grad]
    shards = Timed(DeepSpeedShards(rank, world, torch.device("cpu")))
    reg = ParameterRegulariser(
        kind="wasserstein",
        weight=0.1,
        params=params,
        shards=shards,
        n_projections=args.projections,
        resample=True,
    )
    wall, cpu, comm = [], [], []
    for step in range(args.repeats + 1):
        torch.distributed.barrier()
        shards.cpu = 0.0
        start, start_cpu = time.perf_counter(), time.process_time()
        reg.apply(step)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        comm.append(shards.cpu)
    mine = reg.mine()
    numel = sum(getattr(params[i], "ds_numel", params[i].numel()) for i in mine)
    result = {
        "wall_s": statistics.median(wall[1:]),
        "cpu_s": statistics.median(cpu[1:]),
        "comm_cpu_s": statistics.median(comm[1:]),
        "tensors": len(mine),
        "numel": numel,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(worker, args=(world, rendezvous_file(), args, out), nprocs=world, start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--zero-stage", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--projections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# SW regulariser per rank, {args.size}, ZeRO-{args.zero_stage}, L={args.projections}, "
        f"{date.today()}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"1 thread per rank, load average {os.getloadavg()[0]:.1f} at start\n"
    )
    print(
        "| workers | per-rank CPU s: max [each] | CPU speed-up | of which collectives (CPU s) "
        "| per-rank wall s: max | wall speed-up | tensors per rank | elements per rank |"
    )
    print("|---:|---|---:|---|---:|---:|---|---|")
    base: dict[str, float] = {}
    for world in args.workers:
        ranks = measure(world, args)
        cpu = max(r["cpu_s"] for r in ranks)
        wall = max(r["wall_s"] for r in ranks)
        base = base or {"cpu": cpu, "wall": wall}

        def each(key: str, fmt: str, ranks=ranks) -> str:
            return ", ".join(format(r[key], fmt) for r in ranks)

        print(
            f"| {world} | {cpu:.3f} [{each('cpu_s', '.3f')}] | {base['cpu'] / cpu:.2f}× "
            f"| {each('comm_cpu_s', '.3f')} | {wall:.3f} | {base['wall'] / wall:.2f}× "
            f"| {each('tensors', 'd')} | {each('numel', ',d')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
