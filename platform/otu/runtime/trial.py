"""What runs inside a Tune trial process: :func:`sweep_trial`.

Kept apart from the driver (:mod:`otu.runtime.sweep`) so that a trial process imports only what a
trial needs (torch, the family, Ray Tune's reporting), not the driver's MLflow, Optuna and report
code: unpickling the trainable imports this module in every new trial process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from otu.paths import resolve_paths
from otu.runtime.evaluation import CheckpointEvaluator
from otu.runtime.requests import runner_for
from otu.runtime.resume import claim_loop_checkpoints
from otu.spec import Experiment, parse_experiment


def sweep_trial(
    config: dict[str, Any], *, base: dict[str, Any], sweep_dir: str, seeds: int, pool: str, cwd: str
) -> None:
    """One Tune trial: the base experiment with ``config``'s dotted keys set, over ``seeds`` seeds.
    Checkpoint metrics (``dynamics.every``) are reported to Tune as they arrive (ASHA stops on
    them); the final report holds the unlearned model's metrics, averaged over seeds. Per-step
    metrics go to ``steps.jsonl`` in the trial's folder, which the driver follows into MLflow. Paths
    a swept value names resolve against ``cwd``, the driver's working directory."""
    trial_id = tune.get_context().get_trial_id()
    exp = resolve_paths(parse_experiment(base, check_files=False).with_overrides(config, check_files=False), Path(cwd))
    trial_dir = Path(sweep_dir) / "trials" / trial_id
    per_seed = []
    for seed in seed_values(exp, seeds):
        run_exp = exp.with_overrides({"seed": seed}, check_files=False)
        evaluator = CheckpointEvaluator.attach(run_exp, pool) if exp.dynamics.every > 0 else None
        run_dir = trial_dir if seeds == 1 else trial_dir / f"seed-{seed}"
        claim_loop_checkpoints(Path(sweep_dir), run_dir, run_exp)  # a killed sweep's trial continues
        result = runner_for(run_exp)(  # a spec with task.data.requests runs its chain in the trial
            run_exp,
            run_dir,
            evaluator=evaluator,
            on_checkpoint=lambda step, metrics: tune.report({**metrics, "step": step}),
        )
        per_seed.append(result.metrics["unlearned"])
    tune.report(aggregate(per_seed))


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds under the metric's own name; ``<name>_std`` when there are several seeds."""
    out: dict[str, float] = {}
    for name in per_seed[0]:
        values = np.array([m[name] for m in per_seed], dtype=float)
        out[name] = float(values.mean())
        if len(per_seed) > 1:
            out[f"{name}_std"] = float(values.std(ddof=1))
    return out


def seed_values(exp: Experiment, count: int) -> list[int]:
    """The seeds a trial runs: ``exp.seed`` and the ``count - 1`` after it."""
    return [exp.seed + i for i in range(count)]
