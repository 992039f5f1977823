"""Sweep throughput: the same 8 quickstart trials (a 4×2 grid over α and the OT weight) run
through Ray Tune (`run_sweep`, 1 and 2 concurrent trials) and in a plain sequential loop of
`run_experiment`; prints wall times, speed-up and the per-trial overhead Ray adds.

    python benchmarks/bench_sweep_overhead.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray

from otu.runtime.experiment import prepare, run_experiment
from otu.runtime.sweep import run_sweep
from otu.spec import load_yaml, parse_sweep

REPO = Path(__file__).resolve().parents[1]
GRID = {"method.alpha": [0.005, 0.01, 0.02, 0.05], "method.ot_weight": [1.0, 2.0]}


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="otu-bench-"))
    raw = load_yaml(REPO / "sweeps/quickstart.yaml")
    raw["experiment"] = load_yaml(REPO / "sweeps" / raw["experiment"])
    raw["experiment"].setdefault("tracking", {})["cache_dir"] = str(root / "cache")
    raw["space"] = {key: {"grid": values} for key, values in GRID.items()}
    raw["search"] = {**raw.get("search", {}), "algorithm": "grid", "num_samples": 1}
    sweep = parse_sweep(raw)
    exp = sweep.experiment
    prepare(exp)
    configs = [
        {"method.alpha": a, "method.ot_weight": w}
        for a in GRID["method.alpha"]
        for w in GRID["method.ot_weight"]
    ]

    start = time.perf_counter()
    for i, config in enumerate(configs):
        run_experiment(exp.with_overrides(config), root / "sequential" / str(i))
    t_seq = time.perf_counter() - start

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    walls = {}
    for concurrency in (1, 2):
        s = sweep.model_copy(
            update={"search": sweep.search.model_copy(update={"max_concurrent": concurrency})}
        )
        start = time.perf_counter()
        run_sweep(s, root / f"sweep-{concurrency}", uri)
        walls[concurrency] = time.perf_counter() - start
    ray.shutdown()

    n = len(configs)
    print(f"{n} trials (DLFD on digits, prepared once beforehand)")
    print(f"{'plain sequential loop':<32}{t_seq:8.1f} s")
    for c, wall in walls.items():
        print(
            f"{f'otu sweep, {c} concurrent':<32}{wall:8.1f} s   speed-up vs loop {t_seq / wall:.2f}x"
        )
    print(f"Ray overhead per trial (1 concurrent vs loop): {(walls[1] - t_seq) / n:.2f} s")


if __name__ == "__main__":
    main()
