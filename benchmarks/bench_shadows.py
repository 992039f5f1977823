"""U-LiRA shadows (eval.membership) as Ray tasks on 1 and 2 concurrent slots against a plain loop in
this process (vision family, the digits spec, its method), and the driver's peak extra memory for
6 and N shadows: the prepared task goes into the object store once, so it should not grow with N.

Every measurement starts from an empty cache (its own temporary ``tracking.cache_dir``; the data and
reference models are prepared there before the clock starts), so no shadow is read back.

    python benchmarks/bench_shadows.py [--shadows 12] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import ray
import torch
from _harness import peak_extra_mib

from otu.family import Membership
from otu.registry import family_api
from otu.runtime.experiment import prepare
from otu.runtime.shadows import train_shadows
from otu.spec import Experiment, load_experiment

SPEC = Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml"
FEW = 6
"""The fewest U-LiRA shadows (the memory comparison's small end)."""


def experiment(overrides: list[str], shadows: int, parallel: int, cache: str) -> Experiment:
    return load_experiment(
        SPEC,
        [
            *overrides,
            "eval.membership.attack=ulira",
            f"eval.membership.shadow_models={shadows}",
            f"eval.membership.parallel={parallel}",
            f"tracking.cache_dir={cache}",
        ],
    )


def plain_loop(exp: Experiment) -> float:
    """Wall seconds of every shadow trained in turn in this process."""
    api, prepared = cast(Membership, family_api(exp.task.family)), prepare(exp)
    plan = api.shadow_plan(exp.job(), prepared, exp.seed)
    start = time.perf_counter()
    for task in plan.tasks:
        api.train_shadow(exp.job(), prepared, task, exp.context())
    return time.perf_counter() - start


def on_ray(exp: Experiment) -> tuple[float, float]:
    """Wall seconds of :func:`train_shadows` and the driver's peak extra resident MiB during it."""
    api, prepared = cast(Membership, family_api(exp.task.family)), prepare(exp)
    plan = api.shadow_plan(exp.job(), prepared, exp.seed)
    start = time.perf_counter()
    mib, _ = peak_extra_mib(lambda: train_shadows(exp, api, prepared, plan))
    return time.perf_counter() - start, mib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shadows", type=int, default=12, help="even, > 6 (6 are measured for memory too)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="spec overrides"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    n = args.shadows
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["loop"] = plain_loop(experiment(args.overrides, n, 1, f"{tmp}/loop"))
        rows["ray1"] = on_ray(experiment(args.overrides, n, 1, f"{tmp}/ray1"))
        rows["ray2"] = on_ray(experiment(args.overrides, n, 2, f"{tmp}/ray2"))
        rows["ray2_few"] = on_ray(experiment(args.overrides, FEW, 2, f"{tmp}/few"))
    loop, (one, mib_one), (two, mib_two), (_, mib_few) = rows["loop"], rows["ray1"], rows["ray2"], rows["ray2_few"]
    print(f"{n} U-LiRA shadows of {SPEC.name} {' '.join(args.overrides)}")
    print(f"plain loop (this process): {loop:.1f} s ({loop / n:.2f} s per shadow)")
    print(f"Ray, 1 task at a time:     {one:.1f} s (overhead {(one - loop) / n:+.2f} s per shadow)")
    print(f"Ray, 2 tasks at a time:    {two:.1f} s (speed-up ×{one / two:.2f} over 1, ×{loop / two:.2f} over the loop)")
    print(f"driver peak extra memory:  {mib_few:.0f} MiB ({FEW} shadows), {mib_two:.0f} MiB ({n}), "
          f"{mib_one:.0f} MiB ({n}, 1 at a time)")  # fmt: skip
    ray.shutdown()


if __name__ == "__main__":
    main()
