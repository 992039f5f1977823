"""One experiment, end to end: prepare → reference metrics → unlearn → evaluate → write outputs.

Runs in any process: the CLI's ``otu run``, a Ray Tune trial, a job on a cluster. It knows the family
only through :mod:`otu.registry`, and writes the output contract:

* ``DIR/spec.yaml`` — the resolved spec;
* ``DIR/metrics.json`` — ``{"original": {...}, "retrained": {...}, "unlearned": {...}}``;
* ``DIR/steps.jsonl`` — per-step metrics reported by the unlearning loop (``{"step": k, ...}``);
* ``DIR/dynamics.jsonl`` — metrics of checkpoints evaluated during unlearning (``dynamics.every``);
* ``DIR/plots/*.png`` — the family's figures;
* ``DIR/checkpoint/`` — the unlearned model where the family saves one (LLMs: ``from_pretrained``);
* ``DIR/generations.jsonl`` — per-item outputs of every evaluated model, where the family has them.
* ``DIR/membership-<attack>.parquet`` — per-example membership scores (``eval.membership``), where asked.
* ``DIR/attack-steps.jsonl`` — per-step metrics of attacks run by the launcher (``{"model", "attack", "step", ...}``).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from otu.cache import verified_file, write_verified_file
from otu.errors import RunFailed
from otu.family import TOTAL_STEPS, Attacks, Family, ItemOutputs, LaunchedAttacks, Membership, SavedModels, StepCallback
from otu.registry import family_api
from otu.robustness import with_attacks
from otu.runtime.launch import AttackRun, Launcher, configure_process, launcher_for
from otu.sections import Dynamics
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
    configure_process(exp.compute)
    seed_everything(exp.seed)
    return family_api(exp.task.family).prepare(exp.job(), exp.context())


def run_experiment(
    exp: Experiment,
    out_dir: Path,
    report: Callable[[int, Mapping[str, float]], None] | None = None,
    phase: Callable[[str], None] | None = None,
    evaluator: CheckpointSink | None = None,
    on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
    progress: Callable[[Mapping[str, float], int | None], None] | None = None,
    launcher: Launcher | None = None,
    resume: bool = False,
) -> RunResult:
    """Run ``exp`` and write its outputs into ``out_dir``: the one writer of the output contract,
    whatever runs the unlearning (``launcher``, by default :func:`~otu.runtime.launch.launcher_for`).

    ``report(step, metrics)`` receives the loop's per-step metrics; ``phase(name)`` announces
    progress; ``evaluator`` (see :mod:`otu.runtime.evaluation`) receives a checkpoint every
    ``exp.dynamics.every`` steps and ``on_checkpoint(step, metrics)`` is called as each checkpoint's
    metrics arrive (a Tune trial forwards them to its scheduler); ``progress(metrics, total)`` is
    called once per step the loop reports (``total``: the step count the loop announced, or None).

    The loop keeps its restart checkpoints in ``out_dir/resume/<hash>`` (see :mod:`otu.llm.resume`);
    when that holds one — a retried trial, or ``resume`` (``otu run --resume``, a killed driver) —
    the loop continues from it and the rows already written are kept. It is deleted once
    ``metrics.json`` is written.
    """
    phase = phase or (lambda _name: None)
    api = family_api(exp.task.family)
    launcher = launcher or launcher_for(exp)
    job = exp.job()
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

    phase(f"unlearning with {exp.method.name}")
    start = time.perf_counter()
    resume_dir = _resume_dir(out_dir, exp)
    resume = resume or resume_dir.is_dir()
    recorder = _StepRecorder(out_dir, report, evaluator, on_checkpoint, exp.dynamics, progress, resume)
    seed_everything(exp.seed)
    checkpoint_dir = out_dir / "checkpoint"
    ctx = exp.context(recorder, checkpoint_dir, resume_dir)
    models["unlearned"] = launcher.unlearn(api, exp, prepared, ctx)
    check_finite_weights(models["unlearned"])
    timings["unlearn_s"] = time.perf_counter() - start

    phase("evaluating the unlearned model")
    start = time.perf_counter()
    final = _as_floats(api.evaluate(job, prepared, models["unlearned"]))
    dynamics = recorder.finish(final)
    metrics["unlearned"] = final
    if exp.dynamics.select is not None and dynamics:
        best = select_checkpoint(dynamics, exp.dynamics.select, exp.dynamics.mode)
        metrics["last"] = final
        metrics["unlearned"] = {**{k: v for k, v in best.items() if k != "step"}, "checkpoint_step": best["step"]}
        selected = recorder.stored.pop(int(best["step"]), None)
        if selected is not None and isinstance(api, SavedModels):  # the selected checkpoint, not the last
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            shutil.move(selected, checkpoint_dir)
            models["unlearned"] = api.load_unlearned(job, prepared, checkpoint_dir)
    recorder.discard_stored()
    if isinstance(api, Attacks) and api.attack_labels(job):
        phase("attacking the models (eval.robustness)")
        attack_start = time.perf_counter()
        attacks = _Attacking(exp, api, launcher, prepared, models, out_dir, phase)
        attacked = _reference_attacks(exp, attacks)
        timings["reference_attack_s"] = time.perf_counter() - attack_start
        attack_start = time.perf_counter()
        attacked["unlearned"] = attacks.of("unlearned", checkpoint_dir)
        timings["attack_s"] = time.perf_counter() - attack_start
        metrics = with_attacks(metrics, attacked)
    if isinstance(api, Membership):
        membership_start = time.perf_counter()
        metrics = _with_membership(exp, api, prepared, models, out_dir, metrics, phase)
        timings["membership_s"] = time.perf_counter() - membership_start
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(resume_dir.parent, ignore_errors=True)
    plots = api.plots(job, prepared, models, out_dir / "plots") if _wants_plots(exp) else []
    if isinstance(api, ItemOutputs):  # per-item outputs (the LLM family's generations.jsonl)
        api.outputs(job, prepared, models, out_dir)
    if len(dynamics) > 1:
        from otu.report.plots import plot_dynamics

        plots = [*plots, plot_dynamics(dynamics, out_dir / "plots" / "dynamics.png")]
    timings["evaluate_s"] = time.perf_counter() - start
    return RunResult(metrics=metrics, plots=list(plots), timings=timings)


RESUME = "resume"
"""The folder of a run's loop checkpoints (one subfolder per experiment hash)."""


def resume_dir(out_dir: Path, exp: Experiment) -> Path:
    """Where ``exp``'s loop checkpoints go in ``out_dir``: ``out_dir/resume/<hash>``."""
    return out_dir / RESUME / exp.hash[:16]


def _resume_dir(out_dir: Path, exp: Experiment) -> Path:
    """:func:`resume_dir`, with any other experiment's checkpoints removed (a stale folder never
    resumes a different spec)."""
    mine = resume_dir(out_dir, exp)
    if mine.parent.is_dir():
        for child in mine.parent.iterdir():
            if child != mine:
                shutil.rmtree(child, ignore_errors=True)
    return mine


def select_checkpoint(dynamics: list[dict[str, float]], metric: str, mode: str) -> dict[str, float]:
    """The checkpoint row with the best ``metric`` (the earliest among ties)."""
    sign = 1.0 if mode == "max" else -1.0
    return max(dynamics, key=lambda row: (sign * row[metric], -row["step"]))


def check_finite_weights(model: object) -> None:
    """Raise :class:`RunFailed` if unlearning left NaN/inf in a torch model's weights."""
    if not isinstance(model, torch.nn.Module):
        return
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RunFailed(
            f"unlearning diverged: {len(bad)} weight tensors hold NaN/inf (first: {bad[0]}); "
            "a smaller method.lr usually helps"
        )


class CheckpointSink(Protocol):
    def wants(self, step: int) -> bool: ...
    def submit(self, step: int, checkpoint: object) -> None: ...
    def ready(self) -> list[tuple[int, dict[str, float]]]: ...
    def drain(self) -> list[tuple[int, dict[str, float]]]: ...


class _StepRecorder:
    """The :class:`~otu.family.Reporter` handed to a family: appends to ``steps.jsonl``, forwards
    to ``report``, and sends checkpoints to the evaluator; checkpoint metrics are appended to
    ``dynamics.jsonl`` as they arrive and ``finish`` rewrites it in step order with the final row.

    A loop restarted from a loop checkpoint reports again the steps up to it (as they were: a row
    already written is skipped) and runs the steps after it again: a step at or before the last one
    written with other values replaces the rows from it on. So ``steps.jsonl`` holds every step
    once, and a checkpoint of a step already submitted is not evaluated twice. With ``resume`` (``otu run
    --resume``) the rows and kept checkpoints of the killed run are the starting point.

    Checkpoint directories (DeepSpeed / Ray Train runs) are kept only while the evaluator needs them,
    and the best one by ``dynamics.select``: ``stored`` maps their steps to their paths (also in
    ``kept-checkpoints.json``, for a resumed run)."""

    def __init__(
        self,
        out_dir: Path,
        report: Callable[[int, Mapping[str, float]], None] | None,
        evaluator: CheckpointSink | None,
        on_checkpoint: Callable[[int, dict[str, float]], None] | None,
        dynamics: Dynamics,
        progress: Callable[[Mapping[str, float], int | None], None] | None,
        resume: bool = False,
    ) -> None:
        self.steps_path = out_dir / "steps.jsonl"
        self.dynamics_path = out_dir / "dynamics.jsonl"
        self.kept_path = out_dir / "kept-checkpoints.json"
        if not resume:
            for path in (self.steps_path, self.dynamics_path, self.kept_path):
                path.unlink(missing_ok=True)
        self.report, self.evaluator, self.on_evaluated = report, evaluator, on_checkpoint
        self.select, self.mode = dynamics.select, dynamics.mode
        self.progress = progress
        self.rows = {int(row["step"]): row for row in read_steps(out_dir)}
        self.last_step = max(self.rows, default=-1)
        self.checkpoints: list[dict[str, float]] = read_steps(out_dir, "dynamics")
        self.submitted = {int(row["step"]) for row in self.checkpoints}
        kept = json.loads(self.kept_path.read_text()) if self.kept_path.is_file() else {}
        self.stored: dict[int, Path] = {int(k): Path(v) for k, v in kept.items() if Path(v).is_dir()}

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        step = int(step)
        total = metrics.get(TOTAL_STEPS)
        metrics = {k: v for k, v in metrics.items() if k != TOTAL_STEPS}
        row = {"step": step, **_as_floats(metrics)}
        if self.rows.get(step) == row:  # a restarted loop reports what is recorded already
            return
        if step <= self.last_step:  # a restarted loop ran this step again: its rows from here on go
            self._keep_rows_before(step)
        self.rows[step] = row
        self.last_step = step
        with self.steps_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if "loss" in key and not math.isfinite(value):
                raise RunFailed(
                    f"unlearning diverged at step {step}: {key} = {value}; a smaller method.lr usually helps"
                )
        if self.report is not None:
            self.report(step, metrics)
        if self.progress is not None:
            self.progress(metrics, None if total is None else int(total))
        if self.evaluator is not None:
            self._collect(self.evaluator.ready())

    def _keep_rows_before(self, step: int) -> None:
        self.rows = {k: row for k, row in self.rows.items() if k < step}
        tmp = self.steps_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in self.rows.values()))
        tmp.replace(self.steps_path)

    def wants_checkpoint(self, step: int) -> bool:
        return self.evaluator is not None and self.evaluator.wants(step)

    def on_checkpoint(self, step: int, checkpoint: Any) -> None:
        if self.evaluator is None:
            raise RuntimeError("on_checkpoint without an evaluator: ask wants_checkpoint first")
        step = int(step)
        if step in self.submitted:  # a restarted loop wrote it again: it is (being) evaluated
            if isinstance(checkpoint, Path) and self.stored.get(step) != checkpoint:
                shutil.rmtree(checkpoint, ignore_errors=True)
            return
        self.submitted.add(step)
        if isinstance(checkpoint, Path):
            self.stored[step] = checkpoint
            self._write_kept()
        self.evaluator.submit(step, checkpoint)
        self._collect(self.evaluator.ready())

    def _collect(self, results: list[tuple[int, dict[str, float]]]) -> None:
        for step, metrics in results:
            row = {"step": float(step), **metrics}
            self.checkpoints.append(row)
            with self.dynamics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            if self.on_evaluated is not None:
                self.on_evaluated(step, metrics)
        self._prune()

    def _prune(self) -> None:
        """Delete evaluated checkpoint directories, except the best so far by ``select``."""
        best = (
            select_checkpoint(self.checkpoints, self.select, self.mode)["step"]
            if (self.select is not None and self.checkpoints)
            else None
        )
        pruned = False
        for row in self.checkpoints:
            step = int(row["step"])
            if step != best and step in self.stored:
                shutil.rmtree(self.stored.pop(step), ignore_errors=True)
                pruned = True
        if pruned:
            self._write_kept()

    def _write_kept(self) -> None:
        self.kept_path.write_text(json.dumps({str(k): str(v) for k, v in self.stored.items()}))

    def discard_stored(self) -> None:
        """Delete the checkpoint directories still kept (once the run's model is chosen)."""
        for path in self.stored.values():
            shutil.rmtree(path, ignore_errors=True)
        self.stored.clear()
        self.kept_path.unlink(missing_ok=True)

    def finish(self, final: dict[str, float]) -> list[dict[str, float]]:
        if self.evaluator is None:
            return []
        self._collect(self.evaluator.drain())
        last = max(self.last_step, 0)
        rows = [r for r in self.checkpoints if r["step"] != last]
        rows = sorted([*rows, {"step": float(last), **final}], key=lambda r: r["step"])
        self.dynamics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return rows


@dataclass
class _Attacking:
    """``eval.robustness`` on one model: the family's attacks in this process, and those it trains
    (:class:`~otu.family.LaunchedAttacks`, where the unlearning runs under DeepSpeed or on several
    ranks) first run by the run's launcher, each a run of the family's loop saving into
    ``DIR/attacks/``, loaded, then deleted; their steps go to ``DIR/attack-steps.jsonl``."""

    exp: Experiment
    api: Attacks
    launcher: Launcher
    prepared: Any
    models: Mapping[str, object]
    out_dir: Path
    phase: Callable[[str], None]

    def __post_init__(self) -> None:
        (self.out_dir / "attack-steps.jsonl").unlink(missing_ok=True)

    def of(self, name: str, checkpoint: Path | None = None) -> dict:
        """The attacks on model ``name`` (saved in ``checkpoint``; None: a reference model)."""
        trained: dict[str, object] = {}
        runs = self.out_dir / "attacks"
        try:
            if isinstance(self.api, LaunchedAttacks):
                for label in self.api.launched_attacks(self.exp.job(), self.exp.compute):
                    trained[label] = self._launch(AttackRun(label, name, checkpoint), runs)
                return self.api.attacked(self.exp.job(), self.prepared, self.models[name], self.exp.seed, trained)
            return self.api.attacked(self.exp.job(), self.prepared, self.models[name], self.exp.seed)
        finally:
            shutil.rmtree(runs, ignore_errors=True)

    def _launch(self, run: AttackRun, runs: Path) -> object:
        assert isinstance(self.api, LaunchedAttacks)
        where = f"{type(self.launcher).__name__}, {self.exp.compute.workers} rank(s)"
        self.phase(f"attacking the {run.model} model with {run.label} ({where})")
        log = self.out_dir / "attack-steps.jsonl"

        def on_step(step: int, metrics: Mapping[str, float]) -> None:
            row = {"model": run.model, "attack": run.label, "step": int(step)}
            row |= {k: float(v) for k, v in metrics.items() if k != TOTAL_STEPS}
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

        ctx = self.exp.context(StepCallback(on_step), runs / f"{run.model}@{run.label}")
        return self.launcher.attack(self.api, self.exp, self.prepared, ctx, run)


def _reference_attacks(exp: Experiment, attacks: _Attacking) -> dict:
    """The attacks on the original/oracle models, cached like their metrics (a sweep attacks them once)."""
    path = Path(exp.tracking.cache_dir) / f"reference-attacks-{_reference_key(exp, attacks.prepared)}.json"
    names = [name for name in attacks.models if name in ("original", "retrained")]
    if verified_file(path):
        cached = json.loads(path.read_text())
        if set(cached) == set(names):
            return cached
    attacked = {name: attacks.of(name) for name in names}
    write_verified_file(path, lambda tmp: tmp.write_text(json.dumps(attacked, indent=2)))
    return attacked


def _with_membership(
    exp: Experiment,
    api: Membership,
    prepared: Any,
    models: Mapping[str, object],
    out_dir: Path,
    metrics: Metrics,
    phase: Callable[[str], None],
) -> Metrics:
    """``metrics`` with each model's membership-attack numbers (``eval.membership``) in its row; the
    shadows train as Ray tasks, cached (see :mod:`otu.runtime.shadows`). Unchanged without an attack."""
    if not api.shadow_plan(exp.job(), prepared, exp.seed).tasks:
        return metrics
    from otu.runtime.shadows import membership_metrics

    phase("membership inference on shadow models (eval.membership)")
    rows = membership_metrics(exp, api, prepared, models, out_dir)
    return {name: {**row, **rows.get(name, {})} for name, row in metrics.items()}


def _reference_key(exp: Experiment, prepared: Any) -> str:
    """What the reference models' metrics depend on: the task, the seed, the evaluation settings, and
    the cache entries the models came from (``prepared.cache_id``, where the family's prepared task
    has one: an otu that builds its models differently names new entries, so old metrics are not
    served for new models)."""
    return content_hash(
        {
            "task": exp.task.model_dump(mode="json"),
            "seed": exp.seed,
            "eval": exp.eval.model_dump(mode="json"),
            "method": exp.method.name,  # some families' references differ per method
            "prepared": getattr(prepared, "cache_id", None),
        }
    )


def _reference_metrics(exp: Experiment, api: Family, prepared: Any, models: Mapping[str, object]) -> Metrics:
    """Metrics of the original/oracle models, cached next to the prepared models: they depend only
    on the task, the seed and the evaluation settings, so a sweep computes them once."""
    path = Path(exp.tracking.cache_dir) / f"reference-metrics-{_reference_key(exp, prepared)}.json"
    if verified_file(path):
        cached = json.loads(path.read_text())
        if set(cached) == set(models):
            return cached
    metrics = {name: _as_floats(api.evaluate(exp.job(), prepared, model)) for name, model in models.items()}
    write_verified_file(path, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    return metrics


def read_steps(run_dir: Path, name: str = "steps") -> list[dict[str, float]]:
    """Rows of ``steps.jsonl`` (or ``dynamics.jsonl`` with ``name="dynamics"``)."""
    path = run_dir / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _as_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _wants_plots(exp: Experiment) -> bool:
    return bool(getattr(exp.eval, "plots", True))
