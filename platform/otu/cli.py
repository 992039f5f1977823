"""The ``otu`` command line: run, sweep, validate, report, data.

Every command validates its inputs completely before doing any work, exits 0 on success and
non-zero with a one-line cause on failure, and leaves no partial output behind a bad input.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from otu.errors import OtuError, RunFailed, SpecError
from otu.registry import known_families
from otu.spec import (
    apply_overrides,
    is_sweep,
    load_experiment,
    load_sweep,
    load_yaml,
    parse_experiment,
    parse_sweep,
)

console = Console(stderr=True)
RUNS_ROOT = Path("otu-runs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except OtuError as err:
        console.print(f"[bold red]otu: error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except RunFailed as err:
        console.print(f"[bold red]otu: run failed:[/] {err}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]otu: interrupted[/]")
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otu", description="Optimal-transport machine unlearning.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out: bool = True) -> None:
        if out:
            p.add_argument("--out", type=Path, help="output directory (default otu-runs/<name>-<time>/)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted spec key, e.g. --set method.alpha=0.02 (repeatable)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
                       "or sqlite:///otu-runs/mlflow.db)")

    p = sub.add_parser("run", help="run one experiment spec")
    p.add_argument("spec", type=Path)
    common(p)
    p.add_argument("--log-checkpoint", action="store_true",
                   help="also log the unlearned model's weights to MLflow (default: its path only)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("eval", help="evaluate checkpoints with the family's metrics (no unlearning)")
    p.add_argument("spec", type=Path)
    p.add_argument("--model", dest="models", action="append", default=[], metavar="[NAME=]PATH",
                   help="checkpoint directory or hub id (repeatable; default: the spec's reference models)")
    common(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("sweep", help="run a hyperparameter sweep with Ray Tune")
    p.add_argument("spec", type=Path, nargs="?", help="sweep spec (omit with --resume)")
    common(p)
    p.add_argument("--address", help="Ray cluster address (default: start an embedded local Ray)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the sweep in DIR")
    p.set_defaults(handler=cmd_sweep)

    p = sub.add_parser("validate", help="check an experiment or sweep spec without running it")
    p.add_argument("spec", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("report", help="summarise run or sweep directories")
    p.add_argument("dirs", type=Path, nargs="+")
    common(p)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("data", help="write data sets")
    data_sub = p.add_subparsers(dest="dataset", required=True)
    d = data_sub.add_parser("entities", help="synthetic fictitious-entity QA set (ELUDe format)")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(handler=cmd_data_entities)

    from otu.cluster.commands import add_commands

    add_commands(sub)  # submit, jobs, scale
    return parser


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> None:
    from otu.runtime.experiment import run_experiment
    from otu.tracking.mlflow_store import Tracker, flatten, resolve_tracking_uri

    exp = load_experiment(args.spec, args.overrides)
    uri = resolve_tracking_uri(args.tracking_uri, exp.tracking.uri)
    out_dir = _fresh_out_dir(args.out, exp.name)
    tracker = Tracker(uri, exp.tracking.experiment)
    run_id = tracker.start_run(exp.name, tags={"otu.kind": "run", "otu.spec_hash": exp.hash})
    tracker.log_params(run_id, flatten(exp.to_dict()))

    def report(step: int, metrics) -> None:
        tracker.log_metrics(run_id, metrics, step=step)

    def on_checkpoint(step: int, metrics) -> None:
        tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in metrics.items()}, step=step)

    status = "FAILED"
    try:
        with _guard_output(out_dir), console.status("starting") as spinner:
            evaluator = _local_ray_and_evaluator(exp)
            result = run_experiment(exp, out_dir, report, phase=lambda s: spinner.update(s),
                                    evaluator=evaluator, on_checkpoint=on_checkpoint)
        for model, metrics in result.metrics.items():
            prefix = "" if model == "unlearned" else f"{model}/"
            tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in metrics.items()})
        tracker.log_metrics(run_id, result.timings)
        tracker.log_artifacts(run_id, [out_dir / "metrics.json", out_dir / "spec.yaml", out_dir / "plots",
                                       out_dir / "generations.jsonl"])
        checkpoint = out_dir / "checkpoint"
        if checkpoint.is_dir():
            tracker.set_tags(run_id, {"otu.checkpoint": str(checkpoint.resolve())})
            if args.log_checkpoint:
                tracker.log_artifacts(run_id, [checkpoint], subdir="checkpoint")
        status = "FINISHED"
    finally:
        tracker.end_run(run_id, status)
    print_metrics(result.metrics, title=f"{exp.name} ({exp.method.name})")  # type: ignore[attr-defined]
    console.print(f"results: {out_dir}  ·  MLflow run {run_id} at {uri}")


def cmd_eval(args: argparse.Namespace) -> None:
    from otu.registry import family_spec
    from otu.runtime.checkpoints import evaluate_checkpoints, model_names
    from otu.tracking.mlflow_store import Tracker, flatten, resolve_tracking_uri

    raw = load_yaml(args.spec)
    family = raw.get("task", {}).get("family") if isinstance(raw.get("task"), dict) else None
    if "method" not in raw and family in known_families():  # the method section is not used
        raw["method"] = {"name": next(iter(family_spec(family).methods))}
    apply_overrides(raw, args.overrides)
    exp = parse_experiment(raw)
    checkpoints = model_names(args.models)
    uri = resolve_tracking_uri(args.tracking_uri, exp.tracking.uri)
    out_dir = _fresh_out_dir(args.out, f"{exp.name}-eval")
    tracker = Tracker(uri, exp.tracking.experiment)
    run_id = tracker.start_run(f"{exp.name}-eval", tags={"otu.kind": "eval", "otu.spec_hash": exp.hash})
    tracker.log_params(run_id, flatten({**exp.to_dict(), "models": checkpoints}))
    status = "FAILED"
    try:
        with _guard_output(out_dir), console.status("starting") as spinner:
            metrics = evaluate_checkpoints(exp, out_dir, checkpoints, phase=lambda s: spinner.update(s))
        for model, values in metrics.items():
            tracker.log_metrics(run_id, {f"{model}/{k}": v for k, v in values.items()})
        tracker.log_artifacts(run_id, [out_dir / "metrics.json", out_dir / "spec.yaml", out_dir / "generations.jsonl"])
        status = "FINISHED"
    finally:
        tracker.end_run(run_id, status)
    print_metrics(metrics, title=f"{exp.name} (evaluation)")
    console.print(f"results: {out_dir}  ·  MLflow run {run_id} at {uri}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from otu.runtime.sweep import run_sweep
    from otu.tracking.mlflow_store import resolve_tracking_uri

    if args.resume:
        resume_file = args.resume / "sweep.yaml"
        if not resume_file.is_file():
            raise SpecError(f"--resume: {resume_file} not found (not a sweep directory)")
        raw = load_yaml(resume_file)
        apply_overrides(raw, args.overrides)
        sweep = parse_sweep(raw)
        out_dir = args.resume
    else:
        if args.spec is None:
            raise SpecError("give a sweep spec, or --resume DIR")
        sweep = load_sweep(args.spec, args.overrides)
        out_dir = _fresh_out_dir(args.out, sweep.name)
    uri = resolve_tracking_uri(args.tracking_uri, sweep.experiment.tracking.uri)
    console.print(f"sweep [bold]{sweep.name}[/]: {sweep.search.num_samples} trials, "
                  f"{sweep.search.algorithm} search → {out_dir}")
    start = time.perf_counter()
    with _guard_output(out_dir, keep=bool(args.resume)):
        trials = run_sweep(sweep, out_dir, uri, address=args.address, resume=bool(args.resume))
    console.print(f"done in {time.perf_counter() - start:.0f} s: {trials}, {out_dir / 'summary.md'}, "
                  f"MLflow at {uri}")


def cmd_validate(args: argparse.Namespace) -> None:
    raw = load_yaml(args.spec)
    if is_sweep(raw):
        sweep = load_sweep(args.spec, args.overrides)
        console.print(f"ok: sweep {sweep.name!r} over {', '.join(sweep.space)} "
                      f"({sweep.experiment.task.family}/{sweep.experiment.method.name}), hash {sweep.hash}")  # type: ignore[attr-defined]
    else:
        apply_overrides(raw, args.overrides)
        exp = parse_experiment(raw)
        console.print(f"ok: experiment {exp.name!r} ({exp.task.family}/{exp.method.name}), hash {exp.hash}")  # type: ignore[attr-defined]


def cmd_report(args: argparse.Namespace) -> None:
    from otu.report.compare import compare_sweeps
    from otu.report.summary import write_report

    for run_dir in args.dirs:
        if not ((run_dir / "sweep.yaml").is_file() or (run_dir / "metrics.json").is_file()):
            raise SpecError(f"{run_dir}: neither a sweep (sweep.yaml) nor a run (metrics.json) directory")
    sweep_dirs = [d for d in args.dirs if (d / "sweep.yaml").is_file()]
    for run_dir in args.dirs:
        if run_dir in sweep_dirs:
            files = write_report(run_dir, parse_sweep(load_yaml(run_dir / "sweep.yaml")))
            console.print(f"{run_dir}: wrote {', '.join(str(f) for f in files)}")
        else:
            print_metrics(json.loads((run_dir / "metrics.json").read_text()), title=str(run_dir))
    if len(sweep_dirs) > 1:
        out = args.out or RUNS_ROOT / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        files = compare_sweeps(sweep_dirs, out)
        console.print(f"comparison: {', '.join(str(f) for f in files)}")


def cmd_data_entities(args: argparse.Namespace) -> None:
    from otu.llm.synthetic import write_entities

    files = write_entities(args.out, seed=args.seed)
    for name, path in files.items():
        console.print(f"{name}: {path}")


# ---------------------------------------------------------------- helpers


def _local_ray_and_evaluator(exp):
    """Start an embedded Ray when the run needs it (evaluation actors, Ray Train workers)."""
    if exp.dynamics.every == 0 and exp.compute.workers == 1:
        return None
    import ray

    from otu.runtime.evaluation import CheckpointEvaluator, start_pool

    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if exp.dynamics.every == 0:
        return None
    actors = start_pool(f"run-{exp.hash}", exp.dynamics.pool_size, exp.dynamics.actor_cpus)
    return CheckpointEvaluator(exp, actors)


def print_metrics(metrics: dict[str, dict[str, float]], title: str) -> None:
    names = list(dict.fromkeys(k for m in metrics.values() for k in m))
    table = Table(title=title)
    table.add_column("metric")
    for model in metrics:
        table.add_column(model, justify="right")
    for name in names:
        table.add_row(name, *(f"{metrics[m].get(name, float('nan')):.4f}" for m in metrics))
    Console().print(table)


def _fresh_out_dir(out: Path | None, name: str) -> Path:
    if out is None:
        return RUNS_ROOT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"--out: {out} exists and is not empty (choose another directory)")
    return out


class _guard_output:
    """Remove the output directory if a user error (bad data found late) stops the command."""

    def __init__(self, out_dir: Path, keep: bool = False):
        self.out_dir, self.keep = out_dir, keep
        self.existed = out_dir.exists()

    def __enter__(self) -> _guard_output:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, OtuError) and not (self.keep or self.existed):
            shutil.rmtree(self.out_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
