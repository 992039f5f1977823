"""Evaluation actors vs one process: the same checkpoints evaluated by a pool of Ray actors and
sequentially in this process (vision family, digits, the full metric suite incl. MIA CV).

    python benchmarks/bench_eval_actors.py [--checkpoints 8] [--pool 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import ray
import torch

from otu.registry import family_api
from otu.runtime.evaluation import CheckpointEvaluator, start_pool
from otu.runtime.experiment import prepare
from otu.spec import load_experiment

SPEC = Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="spec overrides, e.g. task.model.arch=resnet18")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = tempfile.mkdtemp(prefix="otu-bench-")
    exp = load_experiment(
        SPEC, [f"tracking.cache_dir={cache}", f"dynamics.pool_size={args.pool}", *args.overrides]
    )
    api = family_api(exp.task.family)
    prepared = prepare(exp)
    original = api.reference_models(prepared)["original"]
    checkpoints = []
    for i in range(args.checkpoints):
        model = copy.deepcopy(original)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(i)
            for p in model.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=gen))
        checkpoints.append(model)

    start = time.perf_counter()
    sequential = [api.evaluate(exp, prepared, m) for m in checkpoints]
    t_seq = time.perf_counter() - start

    ray.init(
        num_cpus=args.pool, include_dashboard=False, configure_logging=False, log_to_driver=False
    )
    evaluator = CheckpointEvaluator(exp, start_pool("bench", args.pool, cpus=1))
    start = time.perf_counter()
    for i in range(args.pool):  # each actor prepares its data once (from the cache)
        evaluator.submit(-1 - i, checkpoints[0])
    evaluator.drain()
    t_warm = time.perf_counter() - start
    start = time.perf_counter()
    for step, model in enumerate(checkpoints):
        evaluator.submit(step, model)
    pooled = dict(evaluator.drain())
    t_pool = time.perf_counter() - start
    ray.shutdown()

    same = all(pooled[i] == sequential[i] for i in range(len(checkpoints)))
    print(f"{args.checkpoints} checkpoints, metric suite: {', '.join(sequential[0])}")
    print(f"{'sequential (1 process)':<28}{t_seq:8.2f} s")
    print(
        f"{f'pool of {args.pool} actors':<28}{t_pool:8.2f} s   (+{t_warm:.2f} s one-time actor warm-up)"
    )
    print(f"speed-up: {t_seq / t_pool:.2f}x   identical metrics: {same}")


if __name__ == "__main__":
    main()
