"""``otu scale``: the measured scaling study of an LLM spec, or ``--estimate`` (no spec, no GPU)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from otu.cli_args import add_overrides
from otu.errors import SpecError
from otu.scaling.worker import DEFAULT_MMAP_THRESHOLD

console = Console(stderr=True, soft_wrap=True)  # a path or URI is never broken over lines (piped: 80 columns)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (got {text!r})") from None


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_scale_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale",
        help="memory / throughput scaling of the unlearning loop over model size, ZeRO stage, "
        "workers and offload; or --estimate DeepSpeed's model-state memory for given models",
    )
    p.add_argument("spec", type=Path, nargs="?", help="LLM experiment spec (not needed with --estimate)")
    add_overrides(p, "override a dotted spec key (repeatable)")
    p.add_argument(
        "--size",
        dest="sizes",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="a model size as spec overrides, e.g. "
        "m:task.model.tiny.hidden=512,task.model.tiny.layers=4 (repeatable; default: the spec's)",
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE,...",
        help="a method/compute variant measured beside the spec, e.g. nosw:method.reg_weight=0 "
        "(repeatable; the spec itself is the variant 'spec' unless variants are given)",
    )
    p.add_argument("--zero", type=_ints, default=[0, 3], help="ZeRO stages, e.g. 0,1,2,3 (default 0,3)")
    p.add_argument("--workers", type=_ints, default=[1, 2], help="worker counts (default 1,2)")
    p.add_argument("--offload", type=_words, default=["none"], help="none,optimizer,params (default none)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run; the first is warm-up")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per combination")
    p.add_argument(
        "--mmap-threshold",
        type=int,
        default=DEFAULT_MMAP_THRESHOLD,
        metavar="BYTES",
        help="glibc MALLOC_MMAP_THRESHOLD_ in the workers, so freed tensors leave the RSS "
        f"(default {DEFAULT_MMAP_THRESHOLD}; 0: glibc's dynamic threshold)",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="only DeepSpeed's model-state estimates for --models (no spec, no GPU needed); "
        "into a study's --out they join its measured rows in the one table and plot",
    )
    p.add_argument(
        "--models",
        type=_words,
        default=None,
        help="presets (llama-3.2-1b … llama-3.1-70b), config.json paths or counts like 13B; "
        "with a spec, their estimates join the measured table and plot",
    )
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node for --estimate (default 8)")
    p.add_argument("--nodes", type=int, default=1, help="nodes for --estimate (default 1)")
    p.add_argument("--out", type=Path, help="output directory (default otu-runs/scale-<time>/)")
    p.set_defaults(handler=cmd_scale)


def cmd_scale(args: argparse.Namespace) -> None:
    out_dir = args.out or Path("otu-runs") / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.estimate:
        _estimate(args, out_dir)
    else:
        _measure(args, out_dir)


def _estimate(args: argparse.Namespace, out_dir: Path) -> None:
    from otu.scaling.estimate import DEFAULT_MODELS, estimate_table, resolve_models
    from otu.scaling.report import read_table, with_estimates, write_scaling_report

    if args.spec is not None:
        raise SpecError("--estimate takes no spec: give --models (presets, config.json paths or counts)")
    if args.gpus_per_node < 1 or args.nodes < 1:
        raise SpecError(f"--gpus-per-node/--nodes: must be >= 1 (got {args.gpus_per_node}, {args.nodes})")
    models = resolve_models(args.models or list(DEFAULT_MODELS))
    estimates = estimate_table(models, args.gpus_per_node, args.nodes)
    # into a study's directory: the estimates join its measured rows (one table, one plot)
    files = write_scaling_report(with_estimates(read_table(out_dir), estimates), out_dir)
    print((out_dir / "scaling.md").read_text(), end="")
    console.print(f"wrote {', '.join(str(f) for f in files)}")


def _measure(args: argparse.Namespace, out_dir: Path) -> None:
    from otu.scaling.estimate import estimate_table, resolve_models
    from otu.scaling.report import with_estimates, write_scaling_report
    from otu.scaling.study import SPEC, StudyFailed, parse_size, plan, run_study
    from otu.spec import load_experiment

    if args.spec is None:
        raise SpecError("give an LLM experiment spec to measure, or --estimate")
    if args.steps < 1:
        raise SpecError(f"--steps: must be >= 1 (got {args.steps})")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise SpecError(f"--out: {args.out} exists and is not empty (choose another directory)")
    exp = load_experiment(args.spec, args.overrides)
    sizes = [parse_size(s) for s in args.sizes] or [SPEC]
    variants = [parse_size(v, "--variant") for v in args.variants] or [SPEC]
    estimates = estimate_table(resolve_models(args.models), args.gpus_per_node, args.nodes) if args.models else []
    items = plan(exp, sizes, args.zero, args.workers, args.offload, args.steps, variants)
    console.print(f"scaling study: {len(items)} combination(s) → {out_dir}")

    def show(row: dict) -> None:
        if row["status"] == "ok":
            console.print(
                f"  {row['size']} ZeRO-{row['zero_stage']} ×{row['workers']} offload {row['offload']} "
                f"{row['variant']}: "
                f"peak {row['peak_rss_gib']:.3f} GiB/worker, step {row['step_time_s']:.2f} s, "
                f"SW {100 * row['sw_share']:.0f} %",
                highlight=False,
            )
        else:
            console.print(
                f"  {row['size']} ZeRO-{row['zero_stage']} ×{row['workers']} offload "
                f"{row['offload']}: [red]{row['error']}[/]",
                highlight=False,
            )

    if args.mmap_threshold < 0:
        raise SpecError(f"--mmap-threshold: must be >= 0 (got {args.mmap_threshold})")
    df = run_study(items, out_dir, args.timeout, mmap_threshold=args.mmap_threshold, on_row=show)
    files = write_scaling_report(with_estimates(df, estimates), out_dir)
    print((out_dir / "scaling.md").read_text(), end="")
    console.print(f"wrote {', '.join(str(f) for f in files)}")
    if (df["status"] != "ok").all():
        raise StudyFailed(f"every combination failed; first error: {df['error'].iloc[0]}")
