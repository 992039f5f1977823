"""One experiment, end to end: prepare → reference metrics → unlearn → evaluate → write outputs.

Runs in any process: the CLI's ``otu run``, a Ray Tune trial, a job on a cluster. It knows the family
only through :mod:`otu.registry`, and writes the output contract:

* ``DIR/spec.yaml`` — the resolved spec;
* ``DIR/metrics.json`` — ``{"original": {...}, "retrained": {...}, "unlearned": {...}}``;
* ``DIR/steps.jsonl`` — per-step metrics reported by the unlearning loop (``{"step": k, ...}``);
* ``DIR/plots/*.png`` — the family's figures.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from otu.registry import Reporter, family_api
from otu.spec import Experiment, content_hash, dump_yaml

Metrics = dict[str, dict[str, float]]


@dataclass
class RunResult:
    metrics: Metrics
    plots: list[Path]
    timings: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare(exp: Experiment) -> object:
    """Prepare (or load from cache) the family's data and reference models for ``exp``."""
    torch.set_num_threads(exp.compute.threads)
    seed_everything(exp.seed)
    return family_api(exp.task.family).prepare(exp, Path(exp.tracking.cache_dir))


def run_experiment(
    exp: Experiment,
    out_dir: Path,
    report: Reporter | None = None,
    phase: Callable[[str], None] | None = None,
) -> RunResult:
    """Run ``exp`` and write its outputs into ``out_dir``; ``phase(name)`` announces progress."""
    phase = phase or (lambda _name: None)
    api = family_api(exp.task.family)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(exp, out_dir / "spec.yaml")
    timings: dict[str, float] = {}

    phase("preparing data and reference models")
    start = time.perf_counter()
    prepared = prepare(exp)
    models = dict(api.reference_models(prepared))
    timings["prepare_s"] = time.perf_counter() - start

    phase("evaluating reference models")
    start = time.perf_counter()
    metrics: Metrics = _reference_metrics(exp, api, prepared, models)
    timings["reference_eval_s"] = time.perf_counter() - start

    phase(f"unlearning with {exp.method.name}")  # type: ignore[attr-defined]
    start = time.perf_counter()
    steps_path = out_dir / "steps.jsonl"
    steps_path.unlink(missing_ok=True)
    record = _step_recorder(steps_path, report)
    seed_everything(exp.seed)
    checkpoint_dir = out_dir / "checkpoint"
    if exp.compute.workers > 1 and hasattr(api, "unlearn_worker"):
        from otu.runtime.train import unlearn_distributed

        cache_dir = Path(exp.tracking.cache_dir)
        models["unlearned"] = unlearn_distributed(exp, api, cache_dir, record, checkpoint_dir)
    else:
        models["unlearned"] = api.unlearn(exp, prepared, record, checkpoint_dir)
    timings["unlearn_s"] = time.perf_counter() - start

    phase("evaluating the unlearned model")
    start = time.perf_counter()
    metrics["unlearned"] = _as_floats(api.evaluate(exp, prepared, models["unlearned"]))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = api.plots(exp, prepared, models, out_dir / "plots") if _wants_plots(exp) else []
    timings["evaluate_s"] = time.perf_counter() - start
    return RunResult(metrics=metrics, plots=list(plots), timings=timings)


def _reference_metrics(exp: Experiment, api, prepared, models: Mapping[str, object]) -> Metrics:
    """Metrics of the original/oracle models, cached next to the prepared models: they depend only
    on the task, the seed and the evaluation settings, so a sweep computes them once."""
    key = content_hash(
        {"task": exp.task.model_dump(mode="json"), "seed": exp.seed, "eval": exp.eval.model_dump(mode="json")}
    )
    path = Path(exp.tracking.cache_dir) / f"reference-metrics-{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if set(cached) == set(models):
            return cached
    metrics = {name: _as_floats(api.evaluate(exp, prepared, model)) for name, model in models.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{random.getrandbits(32):08x}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(path)
    return metrics


def _step_recorder(path: Path, report: Reporter | None) -> Reporter:
    def record(step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": int(step), **_as_floats(metrics)}
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if report is not None:
            report(step, metrics)

    return record


def read_steps(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "steps.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _as_floats(metrics: Mapping[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}  # type: ignore[arg-type]


def _wants_plots(exp: Experiment) -> bool:
    return bool(getattr(exp.eval, "plots", True))
