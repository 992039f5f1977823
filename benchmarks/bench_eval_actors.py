"""Evaluation actors vs one process: the same checkpoints evaluated by a pool of Ray actors and
sequentially in this process (vision family, digits, the full metric suite incl. MIA CV). The
machine's own ceiling is measured beside them: the same work split over plain worker processes
(``multiprocessing``, no Ray), each with the evaluation data loaded once.

    python benchmarks/bench_eval_actors.py [--checkpoints 8] [--pool 2] [--repeats 3] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import ray
import torch

from otu.registry import family_api
from otu.runtime.evaluation import CheckpointEvaluator, start_pool
from otu.runtime.experiment import prepare
from otu.spec import load_experiment

SPEC = Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml"
_worker: dict = {}
T = TypeVar("T")


def _load(overrides: list[str], first) -> None:
    """Worker-process initialiser: the experiment, its family and its prepared data (from the
    cache), then one evaluation, as the actors' warm-up does."""
    torch.set_num_threads(1)
    exp = load_experiment(SPEC, overrides)
    _worker.update(exp=exp, api=family_api(exp.task.family), prepared=prepare(exp))
    _evaluate(first)


def _evaluate(model) -> dict[str, float]:
    return _worker["api"].evaluate(_worker["exp"].job(), _worker["prepared"], model)


def timed(run: Callable[[], T], repeats: int) -> tuple[T, float]:
    """``run()``'s result (of its last run) and its median wall time over ``repeats`` runs (≥ 1)."""
    times, results = [], []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        results.append(run())
        times.append(time.perf_counter() - start)
    return results[-1], statistics.median(times)


def plain_processes(
    overrides: list[str], checkpoints: list, n: int, repeats: int
) -> tuple[list[dict[str, float]], float]:
    """Evaluate ``checkpoints`` on ``n`` plain processes (one task each, like the actor pool)."""
    with mp.get_context("spawn").Pool(n, initializer=_load, initargs=(overrides, checkpoints[0])) as pool:
        pool.map(time.sleep, [1.0] * n, chunksize=1)  # every process is warm
        return timed(lambda: pool.map(_evaluate, checkpoints, chunksize=1), repeats)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timings are medians over repeats")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="spec overrides, e.g. task.model.arch=resnet18",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = tempfile.mkdtemp(prefix="otu-bench-")
    overrides = [f"tracking.cache_dir={cache}", f"dynamics.pool_size={args.pool}", *args.overrides]
    exp = load_experiment(SPEC, overrides)
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

    job = exp.job()
    sequential, t_seq = timed(lambda: [api.evaluate(job, prepared, m) for m in checkpoints], args.repeats)
    in_processes, t_mp = plain_processes(overrides, checkpoints, args.pool, args.repeats)

    ray.init(
        address="local",
        num_cpus=args.pool,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    evaluator = CheckpointEvaluator(exp, start_pool("bench", args.pool, cpus=1))
    start = time.perf_counter()
    for i in range(args.pool):  # each actor prepares its data once (from the cache)
        evaluator.submit(-1 - i, checkpoints[0])
    evaluator.drain()
    t_warm = time.perf_counter() - start

    submits: list[float] = []

    def on_actors() -> dict:
        for step, model in enumerate(checkpoints):
            start = time.perf_counter()
            evaluator.submit(step, model)  # what the training loop waits for
            submits.append(time.perf_counter() - start)
        return dict(evaluator.drain())

    pooled, t_pool = timed(on_actors, args.repeats)
    _, t_put = timed(lambda: [ray.put(m) for m in checkpoints], args.repeats)
    ray.shutdown()

    same = all(pooled[i] == sequential[i] == in_processes[i] for i in range(len(checkpoints)))
    print(f"{args.checkpoints} checkpoints, metric suite: {', '.join(sequential[0])}")
    print(f"median of {args.repeats} runs each")
    print(f"{'sequential (1 process)':<30}{t_seq:8.2f} s")
    print(f"{f'{args.pool} plain processes (no Ray)':<30}{t_mp:8.2f} s   speed-up {t_seq / t_mp:.2f}x")
    print(
        f"{f'pool of {args.pool} Ray actors':<30}{t_pool:8.2f} s   speed-up {t_seq / t_pool:.2f}x"
        f"   (+{t_warm:.2f} s one-time actor warm-up)"
    )
    print(
        f"training loop's wait per checkpoint: {1e3 * statistics.median(submits):.1f} ms "
        f"(ray.put of the whole module: {1e3 * t_put / len(checkpoints):.1f} ms)"
    )
    print(f"identical metrics: {same}")


if __name__ == "__main__":
    main()
