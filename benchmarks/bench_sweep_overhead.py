"""Sweep throughput: the same 8 quickstart trials (a 4×2 grid over α and the OT weight) run
through Ray Tune (`run_sweep`, 1 and 2 concurrent trials) and in a plain sequential loop of
`run_experiment`; prints wall times, each sweep's ratio to the loop and the per-trial overhead Ray
adds, side by side, with the load average (the machine may be shared). From Tune's own per-trial
start/end times (``result.json``) each sweep's overhead is split into start-up + shutdown (before the
first trial runs: the trial processes start and import torch/otu; after the last: the report) and
what remains per trial. Ray is started before the sweeps are timed.

    python benchmarks/bench_sweep_overhead.py
"""

from __future__ import annotations

import json
import os
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
        {"method.alpha": a, "method.ot_weight": w} for a in GRID["method.alpha"] for w in GRID["method.ot_weight"]
    ]

    load_start = os.getloadavg()
    start = time.perf_counter()
    for i, config in enumerate(configs):
        run_experiment(exp.with_overrides(config), root / "sequential" / str(i))
    t_seq = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    t_ray = time.perf_counter() - start
    uri = f"sqlite:///{root / 'mlflow.db'}"
    walls, fixed = {}, {}
    for concurrency in (1, 2):
        s = sweep.model_copy(update={"search": sweep.search.model_copy(update={"max_concurrent": concurrency})})
        start, start_epoch = time.perf_counter(), time.time()
        run_sweep(s, root / f"sweep-{concurrency}", uri)
        walls[concurrency] = time.perf_counter() - start
        first, last = trial_span(root / f"sweep-{concurrency}")
        fixed[concurrency] = (first - start_epoch) + (start_epoch + walls[concurrency] - last)
    ray.shutdown()

    n = len(configs)
    load_end = os.getloadavg()
    print(f"{n} trials (DLFD on digits, prepared once beforehand); Ray started in {t_ray:.1f} s (not timed)")
    print(
        f"load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, "
        f"at end {'/'.join(f'{x:.2f}' for x in load_end)}"
    )
    print(f"{'':<28}{'wall s':>8}{'÷ loop':>8}{'overhead/trial s':>18}{'start-up+shutdown s':>21}{'rest/trial s':>14}")
    print(f"{'plain sequential loop':<28}{t_seq:8.1f}{1.0:8.2f}")
    for c, wall in walls.items():
        print(
            f"{f'otu sweep, {c} concurrent':<28}{wall:8.1f}{wall / t_seq:8.2f}{(wall - t_seq) / n:18.2f}"
            f"{fixed[c]:21.1f}{(wall - fixed[c] - t_seq / c) / n:14.2f}"
        )
    print(
        "overhead/trial = (sweep wall − loop wall) / trials; start-up+shutdown = run_sweep's time before the "
        "first trial runs and after the last ends; rest/trial = (wall − start-up+shutdown − loop/concurrency) / trials"
    )


def trial_span(sweep_dir: Path) -> tuple[float, float]:
    """Epoch seconds when the sweep's first trial function started and its last one ended (Tune's
    ``result.json``: ``timestamp`` at the report, ``time_total_s`` of the function)."""
    starts, ends = [], []
    for path in (sweep_dir / "ray" / "tune").glob("*/result.json"):
        result = json.loads(path.read_text().splitlines()[-1])
        starts.append(result["timestamp"] - result["time_total_s"])
        ends.append(result["timestamp"])
    return min(starts), max(ends)


if __name__ == "__main__":
    main()
