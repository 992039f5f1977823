"""Scaling study: short unlearning runs for each (model size, ZeRO stage, workers, offload).

Every combination is validated as a full experiment first (a bad size override or a batch size
that does not split over the workers fails before anything runs). Each size is prepared once (the
family caches its models); each combination then runs in ``workers`` fresh processes
(:mod:`otu.scaling.worker`) so that every per-worker peak-memory number starts from zero.
A combination that fails (out of memory, a DeepSpeed error) becomes a row with its error; the
others still run.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing as mp
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from otu.errors import OtuError, SpecError
from otu.family import DistributedUnlearning
from otu.process_group import rendezvous_file
from otu.registry import family_api
from otu.scaling.estimate import GIB, estimate
from otu.scaling.worker import DEFAULT_MMAP_THRESHOLD
from otu.spec import Experiment, apply_overrides, parse_experiment

OFFLOAD_STAGES = {"none": (0, 1, 2, 3), "optimizer": (1, 2, 3), "params": (3,)}
"""DeepSpeed's rule: optimizer offload needs ZeRO ≥ 1, parameter offload needs ZeRO-3."""
SCALING_FILE = "scaling.parquet"


class StudyFailed(OtuError):
    """No combination of a scaling study produced a measurement."""


@dataclass(frozen=True)
class Size:
    label: str
    overrides: tuple[str, ...]
    """``dotted.key=value`` items, as for ``--set``."""


SPEC = Size("spec", ())
"""The spec as given: the default size and the default variant."""


def parse_size(text: str, flag: str = "--size") -> Size:
    """``small:task.model.tiny.hidden=256,task.model.tiny.layers=4`` → a labelled override set
    (also a ``--variant`` such as ``nosw:method.reg_weight=0``)."""
    label, sep, rest = text.partition(":")
    if not sep or not label.strip() or not rest.strip():
        raise SpecError(f"{flag}: expected LABEL:KEY=VALUE[,KEY=VALUE...] (got {text!r})")
    items = tuple(item.strip() for item in rest.split(",") if item.strip())
    apply_overrides({}, items)  # checks the KEY=VALUE form
    return Size(label.strip(), items)


@dataclass(frozen=True)
class Combo:
    size: Size
    zero_stage: int
    workers: int
    offload: str
    variant: Size = SPEC
    """Method/compute overrides measured side by side (with/without SW, LoRA …)."""

    @property
    def key(self) -> str:
        key = f"{self.size.label}-z{self.zero_stage}-w{self.workers}-{self.offload}"
        return key if self.variant == SPEC else f"{key}-{self.variant.label}"


def plan(
    exp: Experiment,
    sizes: Sequence[Size],
    stages: Sequence[int],
    workers: Sequence[int],
    offloads: Sequence[str],
    steps: int,
    variants: Sequence[Size] = (SPEC,),
) -> list[tuple[Combo, Experiment]]:
    """Every valid combination as a validated experiment; all problems raised as one SpecError."""
    if not isinstance(family_api(exp.task.family), DistributedUnlearning):
        raise SpecError(
            f"task.family: {exp.task.family!r} has no multi-worker loop (unlearn_worker); "
            "otu scale measures the LLM family"
        )
    for stage in stages:
        if stage not in (0, 1, 2, 3):
            raise SpecError(f"--zero: ZeRO stages are 0-3 (got {stage})")
    for offload in offloads:
        if offload not in OFFLOAD_STAGES:
            raise SpecError(f"--offload: expected one of {', '.join(OFFLOAD_STAGES)} (got {offload!r})")
    for n in workers:
        if n < 1:
            raise SpecError(f"--workers: must be >= 1 (got {n})")
    out, errors = [], []
    raw_base = exp.to_dict()
    for size in sizes:
        for stage in stages:
            for n in workers:
                for offload in offloads:
                    if stage not in OFFLOAD_STAGES[offload]:
                        continue
                    for variant in variants:
                        combo = Combo(size, stage, n, offload, variant)
                        items = [
                            *size.overrides,
                            *variant.overrides,
                            f"compute.zero_stage={stage}",
                            f"compute.workers={n}",
                            f"compute.offload={offload}",
                            f"method.steps={steps}",
                        ]
                        try:
                            raw = apply_overrides(copy.deepcopy(raw_base), items)
                            out.append((combo, parse_experiment(raw)))
                        except SpecError as err:
                            errors.append(f"{combo.key}: {err}")
    if errors:
        raise SpecError("; ".join(errors))
    if not out:
        raise SpecError(
            "--zero/--offload: no valid combination (optimizer offload needs ZeRO >= 1, params offload needs ZeRO-3)"
        )
    return out


def model_size(exp: Experiment) -> tuple[int, int]:
    """(parameters, largest tensor) of the prepared original model of ``exp``, counted in a spawned
    process: preparing may train and load the model (on a GPU too), and none of that memory may stay
    in this process while the workers are measured."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_count_parameters, (exp.to_dict(),))


def _count_parameters(exp_dict: dict[str, Any]) -> tuple[int, int]:
    from otu.runtime.experiment import prepare

    exp = parse_experiment(exp_dict, check_files=False)
    model = family_api(exp.task.family).reference_models(prepare(exp))["original"]
    counts = [p.numel() for p in model.parameters()]
    return sum(counts), max(counts)


def measure(
    combo: Combo, exp: Experiment, run_dir: Path, timeout_s: float, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run one combination in ``combo.workers`` fresh processes (``env`` added to their
    environment); return its measured row."""
    from otu.scaling import worker as scale_worker

    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    rendezvous = rendezvous_file(run_dir)
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(scale_worker.run_rank, r, combo.workers, rendezvous, exp.to_dict(), str(run_dir)),
            name=f"otu-scale-{combo.key}-r{r}",
        )
        for r in range(combo.workers)
    ]
    start = time.perf_counter()
    with _environ(env or {}):  # a spawned process starts with a copy of os.environ
        for p in procs:
            p.start()
    deadline = start + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.perf_counter()))
    timed_out = any(p.is_alive() for p in procs)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(10)
    wall = time.perf_counter() - start
    results = [run_dir / f"rank-{r}.json" for r in range(combo.workers)]
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    if timed_out or not all(f.is_file() for f in results):
        error = f"timed out after {timeout_s:g} s" if timed_out else _first_error(run_dir, procs)
        return {"status": "error", "error": error, "wall_s": wall}
    return {**summarise([json.loads(f.read_text()) for f in results]), "status": "ok", "error": "", "wall_s": wall}


def summarise(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-worker memory (max over ranks) and rank 0's timing, warm-up step excluded."""
    steps = next(r["steps"] for r in ranks if r["rank"] == 0)
    timed = steps[1:] if len(steps) > 1 else steps
    step_s = _mean(timed, "step_time_s")
    reg_s = _mean(timed, "reg_time_s")
    tokens = _mean(timed, "tokens")  # per-rank tokens of one step, averaged over ranks by the loop
    world = ranks[0]["world"]
    gpu = [r["gpu_peak_bytes"] for r in ranks if r["gpu_peak_bytes"] is not None]
    return {
        "peak_rss_gib": max(r["peak_rss_bytes"] for r in ranks) / GIB,
        "baseline_rss_gib": max(r["baseline_rss_bytes"] for r in ranks) / GIB,
        "loop_rss_gib": max(r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in ranks) / GIB,
        "gpu_peak_gib": max(gpu) / GIB if gpu else math.nan,
        "steps": len(steps),
        "step_time_s": step_s,
        "reg_time_s": reg_s,
        "sw_share": reg_s / step_s if step_s > 0 else math.nan,
        "tokens_per_s": tokens * world / step_s if step_s > 0 else math.nan,
    }


def run_study(
    plan_items: list[tuple[Combo, Experiment]],
    out_dir: Path,
    timeout_s: float,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    on_row: Callable[[dict[str, Any]], None] = lambda _row: None,
) -> pd.DataFrame:
    """Measure every combination; ``scaling.parquet`` is rewritten after each, so partial results stay.

    ``mmap_threshold`` > 0 fixes glibc's mmap threshold in the workers (``MALLOC_MMAP_THRESHOLD_``),
    so tensors above it are returned to the OS when freed and peak RSS follows the memory actually
    live; 0 keeps glibc's dynamic threshold, under which freed tensor memory stays resident.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold > 0 else {}
    sizes: dict[str, tuple[int, int]] = {}
    rows: list[dict[str, Any]] = []
    for combo, exp in plan_items:
        if combo.size.label not in sizes:
            sizes[combo.size.label] = model_size(exp)
        params, largest = sizes[combo.size.label]
        measured = measure(combo, exp, out_dir / "runs" / combo.key, timeout_s, env)
        row = {
            "size": combo.size.label,
            "params": params,
            "largest_tensor": largest,
            "zero_stage": combo.zero_stage,
            "workers": combo.workers,
            "offload": combo.offload,
            "variant": combo.variant.label,
            "kind": "measured",
            "device": exp.compute.device,
            "precision": exp.compute.precision,
            "mmap_threshold": mmap_threshold,
            **measured,
            "estimate_gib": estimated_gib(params, largest, combo),
        }
        rows.append(row)
        pd.DataFrame(rows).to_parquet(out_dir / SCALING_FILE, index=False)
        on_row(row)
    return pd.DataFrame(rows)


def estimated_gib(params: int, largest: int, combo: Combo) -> float:
    """DeepSpeed-style model-state estimate per worker, θ₀ included (NaN where none exists)."""
    try:
        est = estimate(params, largest, combo.zero_stage, combo.offload, combo.workers, 1)
    except SpecError:
        return math.nan
    return est.total_gpu_gb


def _rank_main(fn, rank: int, world: int, rendezvous: str, exp_dict: dict[str, Any], out_dir: str) -> None:
    try:
        fn(rank, world, rendezvous, exp_dict, out_dir)
    except BaseException:
        Path(out_dir, f"rank-{rank}.error").write_text(traceback.format_exc())
        raise


def _first_error(run_dir: Path, procs: list) -> str:
    for f in sorted(run_dir.glob("rank-*.error")):
        lines = [line for line in f.read_text().splitlines() if line.strip()]
        return f"{f.stem}: {lines[-1][:500]}" if lines else f.stem
    codes = [p.exitcode for p in procs]
    return f"a worker exited without a result (exit codes {codes}; killed for memory?)"


def _mean(steps: list[dict[str, float]], key: str) -> float:
    values = [s[key] for s in steps if key in s]
    return float(np.mean(values)) if values else math.nan


@contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
