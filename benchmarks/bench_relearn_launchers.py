"""What a relearning attack costs when it runs under the unlearning's launcher: the shipped tiny task
(``sweeps/experiments/optout_tiny.yaml``) on 2 Ray Train workers (ZeRO-2, CPU, gloo), GA unlearning for
``--steps`` steps against a relearn attack of the same step count and global batch (the whole forget
set, batch 8) from the unlearned checkpoint, each a Ray Train run; and the same relearn in the driver
(:func:`otu.llm.attacks.relearn`, one process, fp32 AdamW) for scale. Prints the wall time of each run
and the time inside its steps (the sum of the loop's ``step_time_s``).

    python benchmarks/bench_relearn_launchers.py [--steps 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from otu.family import StepCallback
from otu.llm import attacks
from otu.llm.family import FAMILY
from otu.runtime.launch import AttackRun, RayTrain, configure_process
from otu.spec import load_yaml, parse_experiment

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import ray

    root = Path(tempfile.mkdtemp(prefix="otu-relearn-"))
    raw = load_yaml(REPO / "sweeps/experiments/optout_tiny.yaml")
    raw["method"] = {"name": "ga", "lr": 1e-4, "steps": args.steps, "batch_size": 8}
    raw["compute"] = {"device": "cpu", "workers": 2, "zero_stage": 2}
    raw["tracking"] = {"cache_dir": str(root / "cache")}
    relearn = {"attack": "relearn", "data": "forget", "steps": args.steps, "lr": 1e-4, "batch_size": 8}
    raw["eval"] = {**raw.get("eval", {}), "robustness": [relearn], "plots": False}
    exp = parse_experiment(raw)
    configure_process(exp.compute)
    job = exp.job()
    prepared = FAMILY.prepare(job, exp.context())
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    launcher = RayTrain()
    rows = []

    def timed(name: str, run) -> object:
        steps: list[float] = []
        reporter = StepCallback(lambda s, m: steps.append(m["step_time_s"]))
        start = time.perf_counter()
        model = run(reporter)
        rows.append((name, time.perf_counter() - start, sum(steps), len(steps)))
        return model

    checkpoint = root / "run" / "checkpoint"
    unlearned = timed(
        "unlearning (GA), Ray Train",
        lambda r: launcher.unlearn(FAMILY, exp, prepared, exp.context(r, checkpoint)),
    )
    timed(
        "relearn attack, Ray Train",
        lambda r: launcher.attack(
            FAMILY,
            exp,
            prepared,
            exp.context(r, root / "attack" / "checkpoint"),
            AttackRun("relearn", "unlearned", checkpoint),
        ),
    )
    attack = job.eval.robustness[0]
    records, _ = attacks.relearn_split(prepared.splits, attack, exp.seed)
    start = time.perf_counter()
    attacks.relearn(unlearned, prepared.encoder(), records, attack, exp.seed)
    rows.append(("relearn attack, in the driver", time.perf_counter() - start, float("nan"), args.steps))
    print(f"{'run':<32}{'steps':>6}{'wall s':>9}{'in steps s':>12}")
    for name, wall, inside, n in rows:
        print(f"{name:<32}{n:>6}{wall:>9.1f}{inside:>12.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
