"""DeepSpeed-only entry point for GPU hosts without Ray.

    deepspeed --num_gpus 8 -m otu.llm.launch SPEC --out DIR [--set key=value ...]
    torchrun --nproc_per_node 2 -m otu.llm.launch SPEC --out DIR
    python -m otu.llm.launch SPEC --out DIR            # one process

Every rank runs :func:`otu.llm.family.unlearn_worker` on the process group made from the launcher's
environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT); rank 0 writes ``DIR/steps.jsonl`` as it goes and,
after training, evaluates the original, retain-only and unlearned models into ``DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist

from otu.errors import OtuError
from otu.llm import family
from otu.spec import dump_yaml, load_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m otu.llm.launch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("spec", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--skip-references", action="store_true", help="evaluate the unlearned model only"
    )
    parser.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # deepspeed launcher
    args = parser.parse_args(argv)
    try:
        exp = load_experiment(args.spec, args.overrides)
    except OtuError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != exp.compute.workers:
        print(
            f"error: compute.workers is {exp.compute.workers} but the launcher started {world} ranks",
            file=sys.stderr,
        )
        return 2
    if world > 1:
        cuda = exp.compute.device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    out = args.out.resolve()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(exp, out / "spec.yaml")
        (out / "steps.jsonl").unlink(missing_ok=True)

    def report(step: int, metrics: Mapping[str, float], model: object = None) -> None:
        if rank != 0:
            return
        row = json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}})
        with (out / "steps.jsonl").open("a") as fh:
            fh.write(row + "\n")
        print(row, flush=True)

    cache_dir = Path(exp.tracking.cache_dir)
    family.unlearn_worker(exp, cache_dir, report, out / "checkpoint")
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        prepared = family.prepare(exp, cache_dir)
        models = {} if args.skip_references else family.reference_models(prepared)
        models["unlearned"] = family.load_unlearned(exp, prepared, out / "checkpoint")
        metrics = {name: family.evaluate(exp, prepared, model) for name, model in models.items()}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics["unlearned"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
