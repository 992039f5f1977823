"""The ``otu`` command line: run, sweep, validate, report, data.

Every command validates its inputs completely before doing any work, exits 0 on success and
non-zero with a one-line cause on failure, and leaves no partial output behind a bad input.
"""

from __future__ import annotations

import _thread
import argparse
import json
import math
import re
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from otu.cli_args import add_overrides, writable_dir
from otu.errors import OtuError, RunFailed, SpecError
from otu.family import load_object
from otu.paths import resolve_paths
from otu.registry import family_spec, known_families, require_extra
from otu.spec import (
    Sweep,
    apply_overrides,
    load_deferring,
    load_experiment,
    load_sweep,
    load_yaml,
    parse_experiment,
    parse_sweep,
)
from otu.tracking.storage import check_uri, is_uri, staged

console = Console(stderr=True, soft_wrap=True)  # a path or URI is never broken over lines (piped: 80 columns)
RUNS_ROOT = Path("otu-runs")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A mistake the user can fix is one line ``otu: error: ...`` (exit 2); a
    failure during the work is one line ``otu: run failed: ...`` (exit 1, ``--debug`` adds the
    traceback); SIGTERM ends the command like Ctrl-C, so open MLflow runs are closed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = ["--debug"] * debug + [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        args.handler(args)
    except OtuError as err:
        _say("otu: error:", err, debug)
        return 2
    except RunFailed as err:
        _say("otu: run failed:", err, debug)
        return 1
    except KeyboardInterrupt:
        INTERRUPTED.set()
        _say("otu: interrupted", "", debug)
        return 130
    except Exception as err:  # noqa: BLE001 — the last line of defence: one line, not a traceback
        _say(
            "otu: run failed:",
            f"{type(err).__name__}: {err}" + ("" if debug else " (--debug shows the traceback)"),
            debug,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _say(label: str, message: object, debug: bool) -> None:
    """One line on stderr; the user's text is never read as rich markup."""
    if debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    text = re.sub(r"\s*\n\s*", " ", str(message)).strip()
    console.print(Text.assemble((label, "bold red"), " " * bool(text), text), highlight=False)


INTERRUPTED = threading.Event()
"""Set where a KeyboardInterrupt (Ctrl-C, or SIGTERM through :func:`_terminate`) is caught."""


def _terminate(signum, frame) -> None:
    """SIGTERM: a KeyboardInterrupt in the main thread. Raised inside a garbage-collector callback
    or a ``__del__`` it would be ignored ("Exception ignored in ...") and the command would go on,
    so it is raised again every 2 s until a handler caught one."""

    if not any(t.name == "otu-sigterm" for t in threading.enumerate()):
        threading.Thread(target=_insist, name="otu-sigterm", daemon=True).start()
    raise KeyboardInterrupt


def _insist() -> None:
    while not INTERRUPTED.wait(2.0):
        _thread.interrupt_main(signal.SIGTERM)  # runs _terminate in the main thread again


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _Parser(argparse.ArgumentParser):
    """argparse with the house error format: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"otu: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="otu", description="Optimal-transport machine unlearning.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--out",
            help="output directory, or a storage URI (s3://…, gs://…, "
            "file:///…) written when the command ends (default otu-runs/<name>-<time>/)",
        )
        add_overrides(p, "override a dotted spec key, e.g. --set method.alpha=0.02 (repeatable)")
        p.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///otu-runs/mlflow.db)"
        )

    p = sub.add_parser("run", help="run one experiment spec")
    p.add_argument("spec", type=Path, nargs="?", help="experiment spec (YAML; omit with --resume)")
    common(p)
    p.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the killed run in DIR (an LLM run from its latest loop checkpoint)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster to attach to, host:port or ray://host:10001 "
        "(default: $RAY_ADDRESS, else start an embedded local Ray when the run needs one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display (for CI logs)")
    p.add_argument(
        "--log-checkpoint",
        action="store_true",
        help="also log the unlearned model's weights to MLflow (default: its path only)",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("eval", help="evaluate checkpoints with the family's metrics (no unlearning)")
    p.add_argument("spec", type=Path, help="experiment spec (its data and evaluation settings)")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="checkpoint directory or hub id (repeatable; default: the spec's reference models)",
    )
    common(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("sweep", help="run a hyperparameter sweep with Ray Tune")
    p.add_argument("spec", type=Path, nargs="?", help="sweep spec (omit with --resume)")
    common(p)
    p.add_argument(
        "--address",
        help="Ray cluster to attach to, host:port or ray://host:10001 "
        "(default: $RAY_ADDRESS, else start an embedded local Ray)",
    )
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the sweep in DIR")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(handler=cmd_sweep)

    p = sub.add_parser("validate", help="check an experiment or sweep spec without running it")
    p.add_argument("spec", type=Path, help="experiment or sweep spec (YAML)")
    add_overrides(p, "override a dotted spec key before checking (repeatable)")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("report", help="summarise run or sweep directories")
    p.add_argument("dirs", type=Path, nargs="+", help="run or sweep directories")
    p.add_argument(
        "--out", type=Path, help="where a comparison of several sweeps goes (default otu-runs/compare-<time>/)"
    )
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("spec", help="every spec key of a family: type, default, bounds, description")
    p.add_argument("family", help="llm, vision, tabular or generative")
    p.add_argument("method", nargs="?", help="only this method's hyperparameters (default: all methods)")
    p.set_defaults(handler=cmd_spec)

    p = sub.add_parser("data", help="write data sets (each family's commands)")
    data_sub = p.add_subparsers(dest="dataset", required=True)
    for family in known_families():
        commands = family_spec(family).data_commands
        if commands is not None:
            load_object(commands)(data_sub)

    from otu.cluster.commands import add_commands
    from otu.scaling.cli import add_scale_command

    add_commands(sub)  # submit, jobs
    add_scale_command(sub)
    return parser


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> None:
    from otu.runtime.resources import check_device
    from otu.tracking.mlflow_store import resolve_tracking_uri

    if args.resume is not None:
        exp, location = _resumed_run(args)
        if exp is None:
            return
    elif args.spec is None:
        raise SpecError("give an experiment spec, or --resume DIR")
    else:
        exp = load_experiment(args.spec, args.overrides)
        location = _fresh_out_dir(args.out, exp.name)
    require_extra(exp.task.family)
    check_device(exp)
    uri = resolve_tracking_uri(args.tracking_uri or _resumed_uri(args.resume), exp.tracking.uri)
    writable_dir(Path(exp.tracking.cache_dir), "tracking.cache_dir")
    with staged(location, exp.name) as out_dir:
        _run(args, exp, uri, out_dir)
    console.print(f"results: {location}  ·  MLflow at {uri}", highlight=False, markup=False)


RUN_STATE = "mlflow.json"
"""A run directory's MLflow run (``{"tracking_uri", "run_id"}``), for ``otu run --resume``."""


def _log_requests(tracker, run_id: str, name: str, out_dir: Path) -> None:
    """A child run per request of a chain (``DIR/requests/<k>/``), once: a resumed chain adds the
    requests its first run did not log."""
    for k, sub in enumerate(sorted((out_dir / "requests").glob("[0-9]*")), start=1):
        if not (sub / "metrics.json").is_file() or tracker.find_run("otu.request", str(k), parent=run_id):
            continue
        child = tracker.start_run(
            f"{name}-request-{k}", tags={"otu.kind": "request", "otu.request": str(k)}, parent=run_id
        )
        for model, metrics in json.loads((sub / "metrics.json").read_text()).items():
            tracker.log_metrics(
                child, {f"{'' if model == 'unlearned' else model + '/'}{m}": v for m, v in metrics.items()}
            )
        tracker.log_artifacts(child, [sub / "metrics.json", sub / "spec.yaml", sub / "generations.jsonl"])
        tracker.end_run(child, "FINISHED")


def _resumed_run(args: argparse.Namespace):
    """``otu run --resume DIR``: the experiment of ``DIR/spec.yaml`` and DIR, or (None, DIR) when
    the run has finished (its metrics are printed; nothing is redone)."""
    if args.spec is not None or args.overrides or args.out:
        raise SpecError("--resume DIR takes no spec, --set or --out: DIR/spec.yaml says what the run is")
    spec = args.resume / "spec.yaml"
    if not spec.is_file():
        raise SpecError(f"--resume: {spec} not found (not a run directory)")
    metrics = args.resume / "metrics.json"
    exp = load_experiment(spec)
    if metrics.is_file():
        print_metrics(json.loads(metrics.read_text()), title=f"{exp.name} ({exp.method.name})")
        console.print(f"{args.resume} finished already: nothing to resume", highlight=False, markup=False)
        return None, str(args.resume)
    return exp, str(args.resume.absolute())


def _resumed_uri(run_dir: Path | None) -> str | None:
    """The tracking URI the run in ``run_dir`` logged to (its MLflow run goes on there)."""
    state = None if run_dir is None else run_dir / RUN_STATE
    return json.loads(state.read_text()).get("tracking_uri") if state is not None and state.is_file() else None


def _run(args: argparse.Namespace, exp, uri: str, out_dir: Path) -> None:
    from otu.progress import RunProgress
    from otu.runtime.requests import runner_for  # run_experiment, or a chain of requests (task.data.requests)
    from otu.tracking.mlflow_store import Tracker, flatten

    tracker = Tracker(uri, exp.tracking.experiment)
    state_path = out_dir / RUN_STATE
    state = json.loads(state_path.read_text()) if args.resume and state_path.is_file() else {}
    if state.get("tracking_uri") == uri:  # the killed run's MLflow run goes on
        run_id = state["run_id"]
        tracker.claim(run_id)
    else:
        run_id = tracker.start_run(exp.name, tags={"otu.kind": "run", "otu.spec_hash": exp.hash})
        tracker.log_params(run_id, flatten(exp.to_dict()))

    def report(step: int, metrics) -> None:
        tracker.log_metrics(run_id, metrics, step=step)

    def on_checkpoint(step: int, metrics) -> None:
        tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in metrics.items()}, step=step)

    status, discard = "FAILED", False
    try:
        with _guard_output(out_dir, keep=bool(args.resume)), RunProgress(console, quiet=args.quiet) as progress:
            progress.phase("starting")
            out_dir.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}))
            evaluator = _ray_and_evaluator(exp, args.address)
            result = runner_for(exp)(
                exp,
                out_dir,
                report,
                phase=progress.phase,
                evaluator=evaluator,
                on_checkpoint=on_checkpoint,
                progress=progress.step,
                resume=bool(args.resume),
            )
        for model, metrics in result.metrics.items():
            prefix = "" if model == "unlearned" else f"{model}/"
            tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in metrics.items()})
        tracker.log_metrics(run_id, result.timings)
        _log_requests(tracker, run_id, exp.name, out_dir)  # a request chain: one child run per request
        tracker.log_artifacts(
            run_id, [out_dir / "metrics.json", out_dir / "spec.yaml", out_dir / "plots", out_dir / "generations.jsonl"]
        )
        checkpoint = out_dir / "checkpoint"
        if checkpoint.is_dir():
            tracker.set_tags(run_id, {"otu.checkpoint": str(checkpoint.resolve())})
            if args.log_checkpoint:
                tracker.log_artifacts(run_id, [checkpoint], subdir="checkpoint")
        status = "FINISHED"
    except OtuError:
        discard = True  # a user error found late (bad data): nothing of the run is kept
        raise
    except KeyboardInterrupt:
        INTERRUPTED.set()
        status = "KILLED"
        raise
    finally:
        tracker.end_run(run_id, status)
        if discard:
            tracker.client.delete_run(run_id)
    print_metrics(result.metrics, title=f"{exp.name} ({exp.method.name})")
    console.print(f"MLflow run {run_id}")


def cmd_eval(args: argparse.Namespace) -> None:
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
    location = _fresh_out_dir(args.out, f"{exp.name}-eval")
    tracker = Tracker(uri, exp.tracking.experiment)
    run_id = tracker.start_run(f"{exp.name}-eval", tags={"otu.kind": "eval", "otu.spec_hash": exp.hash})
    tracker.log_params(run_id, flatten({**exp.to_dict(), "models": checkpoints}))
    status = "FAILED"
    try:
        with (
            staged(location, f"{exp.name}-eval") as out_dir,
            _guard_output(out_dir),
            console.status("starting") as spinner,
        ):
            metrics = evaluate_checkpoints(exp, out_dir, checkpoints, phase=lambda s: spinner.update(s))
            tracker.log_artifacts(run_id, [out_dir / f for f in ("metrics.json", "spec.yaml", "generations.jsonl")])
        for model, values in metrics.items():
            tracker.log_metrics(run_id, {f"{model}/{k}": v for k, v in values.items()})
        status = "FINISHED"
    finally:
        tracker.end_run(run_id, status)
    print_metrics(metrics, title=f"{exp.name} (evaluation)")
    console.print(f"results: {out_dir}  ·  MLflow run {run_id} at {uri}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from otu.runtime.sweep import run_sweep, trial_count
    from otu.tracking.mlflow_store import resolve_tracking_uri
    from otu.tracking.results import TRIALS_FILE, TrialsTable

    if args.resume:
        resume_file = args.resume / "sweep.yaml"
        if not resume_file.is_file():
            raise SpecError(f"--resume: {resume_file} not found (not a sweep directory)")
        raw = load_yaml(resume_file)
        apply_overrides(raw, args.overrides)
        sweep = resolve_paths(parse_sweep(raw), Path.cwd())
        location = str(args.resume.absolute())
        TrialsTable(args.resume / TRIALS_FILE).read()  # unreadable state is an error before any work
    else:
        if args.spec is None:
            raise SpecError("give a sweep spec, or --resume DIR")
        sweep = load_sweep(args.spec, args.overrides)
        location = _fresh_out_dir(args.out, sweep.name)
    require_extra(sweep.experiment.task.family)
    writable_dir(Path(sweep.experiment.tracking.cache_dir), "experiment.tracking.cache_dir")
    uri = resolve_tracking_uri(args.tracking_uri, sweep.experiment.tracking.uri)
    trials = trial_count(sweep)
    console.print(
        f"sweep [bold]{sweep.name}[/]: {trials} trial{'s' if trials != 1 else ''}, "
        f"{sweep.search.algorithm} search → {escape(location)}",
        highlight=False,
    )
    start = time.perf_counter()
    storage = f"{location.rstrip('/')}/ray" if is_uri(location) else None
    with staged(location, sweep.name) as out_dir, _guard_output(out_dir, keep=bool(args.resume)):
        run_sweep(
            sweep, out_dir, uri, address=args.address, resume=bool(args.resume), storage=storage, quiet=args.quiet
        )
    console.print(
        f"done in {time.perf_counter() - start:.0f} s: {location} (trials.parquet, summary.md), MLflow at {uri}",
        highlight=False,
        markup=False,
    )


def cmd_validate(args: argparse.Namespace) -> None:
    parsed, deferred = load_deferring(args.spec, args.overrides, Path.cwd())
    if isinstance(parsed, Sweep):
        exp = parsed.experiment
        console.print(
            f"ok: sweep {parsed.name!r} over {', '.join(parsed.space)} "
            f"({exp.task.family}/{exp.method.name}), hash {parsed.hash}",
            markup=False,
        )
    else:
        console.print(
            f"ok: experiment {parsed.name!r} ({parsed.task.family}/{parsed.method.name}), hash {parsed.hash}",
            markup=False,
        )
    if deferred:
        listed = ", ".join(f"{k}={v}" for k, v in deferred.items())
        console.print(
            f"not checked here (a hub id, or a file not on this machine; the run checks "
            f"them before any work): {listed}",
            markup=False,
            highlight=False,
        )


def cmd_report(args: argparse.Namespace) -> None:
    from otu.report.compare import compare_sweeps
    from otu.report.summary import run_html, write_report

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
            console.print(f"{run_dir}: wrote {run_html(run_dir)}")
    if len(sweep_dirs) > 1:
        out = Path(args.out) if args.out else RUNS_ROOT / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        files = compare_sweeps(sweep_dirs, out)
        console.print(f"comparison: {', '.join(str(f) for f in files)}")


def cmd_spec(args: argparse.Namespace) -> None:
    from otu.registry import FAMILIES, family_spec, known_families
    from otu.spec_reference import common_blocks, family_blocks, markdown_block

    if args.family not in FAMILIES:
        raise SpecError(f"family: unknown family {args.family!r}; known: {', '.join(known_families())}")
    methods = family_spec(args.family).methods
    if args.method is not None and args.method not in methods:
        raise SpecError(
            f"method: unknown method {args.method!r} for family {args.family!r}; known: {', '.join(sorted(methods))}"
        )
    out = Console()
    blocks = [*common_blocks(), *family_blocks(args.family, args.method)]
    if not out.is_terminal:  # piped: Markdown rows, one key per line (grep finds every key whole)
        sys.stdout.write("\n".join(line for block in blocks for line in markdown_block(block, "##")))
        return
    for block in blocks:
        table = Table(
            title=block.title, title_justify="left", caption=block.about or None, caption_justify="left", expand=False
        )
        for column in ("key", "type", "default", "bounds", "description"):
            table.add_column(column, overflow="fold")
        for key in block.keys:
            table.add_row(key.key, key.type, key.default, key.bounds, key.description)
        out.print(table, markup=False)


# ---------------------------------------------------------------- helpers


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otu")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _ray_and_evaluator(exp, address: str | None):
    """Start (or attach) Ray when the run needs it (evaluation actors, Ray Train workers)."""
    if exp.dynamics.every == 0 and exp.compute.workers == 1:
        return None
    import ray

    from otu.runtime.evaluation import CheckpointEvaluator, start_pool
    from otu.runtime.ray_session import init_ray
    from otu.runtime.resources import check_fits

    init_ray(address, log_to_driver=False)
    check_fits(exp, ray.cluster_resources())
    if exp.dynamics.every == 0:
        return None
    actors = start_pool(f"run-{exp.hash}", exp.dynamics.pool_size, exp.dynamics.actor_cpus)
    return CheckpointEvaluator(exp, actors)


def print_metrics(metrics: dict[str, dict[str, float]], title: str) -> None:
    """The models' metrics side by side; with attacks (``model@label`` rows), then each attack's
    forget metrics and recovery, model by model."""
    from otu.robustness import tables

    models, names, attacked = tables(metrics)
    _print_table(title, models, names, lambda model, name: metrics[model].get(name, math.nan))
    if attacked:
        _print_table("after the attacks (eval.robustness)", models, attacked, lambda m, n: metrics[m].get(n, math.nan))


def _print_table(title: str, columns: list[str], rows: list[str], value) -> None:
    table = Table(title=title)
    table.add_column("metric")
    for column in columns:
        table.add_column(column, justify="right")
    for name in rows:
        values = [value(column, name) for column in columns]
        if all(math.isnan(v) for v in values):  # e.g. TOFU's world parts on another layout (kept in metrics.json)
            continue
        table.add_row(name, *(f"{v:.4f}" for v in values))
    Console().print(table)


def _fresh_out_dir(out: str | None, name: str) -> str:
    """The output location: ``--out`` (a storage URI, or a directory made absolute), or a new
    ``otu-runs/<name>-<time>``."""
    if out is None:
        return str((RUNS_ROOT / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").absolute())
    if is_uri(out):
        check_uri(out)
        return out
    path = Path(out)
    if path.is_dir() and any(path.iterdir()):
        raise SpecError(f"--out: {out} exists and is not empty (choose another directory)")
    return str(writable_dir(path, "--out").absolute())


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
