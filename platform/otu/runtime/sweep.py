"""The Ray Tune sweep driver.

The driver validates nothing (the spec already is), prepares the data and reference models once per
seed, then runs one Tune trial per configuration (:func:`otu.runtime.trial.sweep_trial`: the
experiment for each of its seeds, the mean (and std) of the unlearned model's metrics reported once,
at the end). The driver alone writes ``trials.parquet`` and MLflow (see :mod:`otu.runtime.recorder`:
child runs open as trials start and follow their per-step metrics), so trials never race on a
SQLite file.

Layout of a sweep directory::

    DIR/sweep.yaml        resolved sweep spec (what --resume reads)
    DIR/trials.parquet    one row per finished trial
    DIR/trials/<id>/      each trial's run outputs (metrics.json, spec.yaml, steps.jsonl, plots/)
    DIR/ray/tune/         Ray Tune's experiment state (logs only: --resume rebuilds the search from
                          sweep.yaml + trials.parquet, see :mod:`otu.runtime.resume`)
    DIR/summary.md, DIR/pareto.png
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from otu.errors import SpecError
from otu.report.summary import write_report
from otu.runtime.evaluation import start_pool
from otu.runtime.experiment import prepare
from otu.runtime.ray_session import init_ray
from otu.runtime.recorder import SweepRecorder
from otu.runtime.resources import check_fits
from otu.runtime.resume import Plan, plan, remove_unrecorded
from otu.runtime.trial import seed_values, sweep_trial
from otu.runtime.trial_lines import TrialLines
from otu.spec import Experiment, Param, Sweep, dump_yaml, parse_experiment
from otu.tracking.results import TRIALS_FILE

TUNE_NAME = "tune"


def run_sweep(
    sweep: Sweep,
    out_dir: Path,
    tracking_uri: str,
    address: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    quiet: bool = False,
) -> Path:
    """Run (or resume) ``sweep`` into ``out_dir``; return the path of ``trials.parquet``.

    Tune keeps its state in ``storage`` (default ``out_dir/ray``; a URI for durable cluster runs).
    Unless ``quiet``, a line is printed as each trial finishes (Tune's own tables stay off)."""
    import ray

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = sweep.experiment
    if not resume:
        dump_yaml(sweep, out_dir / "sweep.yaml")

    # trials keep the driver's working directory (a swept path resolves as in the driver)
    init_ray(address, runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    check_fits(sweep, ray.cluster_resources())
    prepare_here = check_gpus(sweep)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for seed in seed_values(base, sweep.search.seeds):
        seeded = base.with_overrides({"seed": seed})
        if prepare_here:
            prepare(seeded)
        else:  # a CPU-only driver (a cluster's head): prepare on a GPU worker
            ray.get(ray.remote(num_gpus=1)(_prepare_remote).remote(seeded.to_dict()))
    timings["prepare_s"] = time.perf_counter() - start

    pool = f"sweep-{sweep.hash}"
    # the driver holds the actors' handles for the whole sweep (an unreferenced actor is reclaimed)
    evaluators = start_pool(pool, base.dynamics.pool_size, base.dynamics.actor_cpus) if base.dynamics.every else []
    trainable = tune.with_resources(
        tune.with_parameters(
            sweep_trial,
            base=base.to_dict(),
            sweep_dir=str(out_dir),
            seeds=sweep.search.seeds,
            pool=pool,
            cwd=os.getcwd(),
        ),
        _trial_resources(sweep, base),
    )
    storage = storage or str(out_dir / "ray")
    work = plan(sweep, out_dir, resume)
    if resume:  # never restored (pickles): the table says what is left
        shutil.rmtree(out_dir / "ray" / TUNE_NAME, ignore_errors=True)
        SweepRecorder(str(out_dir), tracking_uri, sweep.experiment.tracking.experiment).backfill(work.finished)
    start = time.perf_counter()
    if work.num_samples > 0:
        searcher = search_algorithm(sweep, work)
        space = {key: to_tune(param) for key, param in sweep.space.items()}
        tuner = tune.Tuner(
            trainable,
            # Optuna holds the space itself (it was warm-started on it)
            param_space={} if sweep.search.algorithm in ("optuna", "nsga2") else space,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler(sweep),
                num_samples=work.num_samples,
                max_concurrent_trials=sweep.search.max_concurrent,
                # a trial process keeps torch/otu imported for the next trial (seconds per trial)
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=TUNE_NAME,
                storage_path=storage,
                callbacks=[
                    SweepRecorder(str(out_dir), tracking_uri, sweep.experiment.tracking.experiment),
                    *([] if quiet else [TrialLines([o.metric for o in sweep.objectives], trial_count(sweep))]),
                ],
                failure_config=tune.FailureConfig(max_failures=sweep.search.max_failures),
                verbose=0,  # otu's trial lines instead of Tune's boxed tables (its results stay in storage)
            ),
        )
        # Tune's "new output" prints a configuration box and TensorBoard hints even at verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        tuner.fit()
    if resume:
        remove_unrecorded(out_dir)
    timings["trials_s"] = time.perf_counter() - start
    for actor in evaluators:
        ray.kill(actor)

    recorder = SweepRecorder(str(out_dir), tracking_uri, sweep.experiment.tracking.experiment)
    report_files = write_report(out_dir, sweep, timings)
    recorder.finish(report_files, timings)
    return out_dir / TRIALS_FILE


def trial_count(sweep: Sweep) -> int:
    """Trials the sweep runs: ``num_samples``, times the grid's size when it has grid keys."""
    grid = [len(p.grid) for p in sweep.space.values() if p.grid is not None]
    return sweep.search.num_samples * int(np.prod(grid)) if grid else sweep.search.num_samples


def to_tune(param: Param) -> Any:
    kind, value = param.kind, getattr(param, param.kind)
    if kind == "grid":
        return tune.grid_search(list(value))
    if kind == "choice":
        return tune.choice(list(value))
    if kind == "uniform":
        return tune.uniform(*value)
    if kind == "loguniform":
        return tune.loguniform(*value)
    return tune.randint(*value)


def search_algorithm(sweep: Sweep, work: Plan | None = None):
    """Ray Tune's variant generator for grid/random (for a resumed grid: the remaining points);
    Optuna (TPE or NSGA-II) otherwise, warm-started with the finished trials."""
    algo = sweep.search.algorithm
    if algo == "grid" and work is not None and work.grid_points is not None:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=work.grid_points)
    if algo in ("grid", "random"):
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from otu.runtime.nsga2 import NSGAIISampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
    warm = work.warm if work is not None else []
    seed = sweep.experiment.seed + len(warm)  # a resumed study does not replay the first suggestions
    sampler = NSGAIISampler(seed=seed) if algo == "nsga2" else optuna.samplers.TPESampler(seed=seed)
    metrics = [o.metric for o in sweep.objectives]
    modes: list[str] = [o.mode for o in sweep.objectives]
    space = OptunaSearch.convert_search_space({key: to_tune(param) for key, param in sweep.space.items()})
    if len(metrics) == 1:
        searcher = OptunaSearch(space, metric=metrics[0], mode=modes[0], sampler=sampler)
    else:
        searcher = OptunaSearch(space, metric=metrics, mode=modes, sampler=sampler)
    for config, values in warm:
        try:
            trial = optuna.trial.create_trial(params=config, distributions=space, values=values)
        except ValueError:  # a value outside today's space (the spec was edited): not history
            continue
        searcher._ot_study.add_trial(trial)
    return searcher


def scheduler(sweep: Sweep):
    """ASHA on the single objective, fed by checkpoint metrics; None (FIFO) otherwise."""
    if sweep.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    objective = sweep.objectives[0]
    return ASHAScheduler(metric=objective.metric, mode=objective.mode, grace_period=1)


def _trial_resources(sweep: Sweep, exp: Experiment) -> dict[str, float]:
    if exp.compute.workers > 1:
        # the trial only drives a Ray Train run whose workers hold the CPUs; Tune refuses an empty
        # request, so the trial asks for one byte of memory
        return {"cpu": 0, "gpu": 0, "memory": 1}
    return {"cpu": sweep.resources.cpus, "gpu": sweep.resources.gpus}


def check_gpus(sweep: Sweep) -> bool:
    """Check a ``compute.device: cuda`` sweep's GPU placement (the cluster has GPUs: ``check_fits``);
    True when the driver has CUDA itself (it prepares the reference models here), False when a GPU
    worker must do it."""
    exp = sweep.experiment
    if exp.compute.device != "cuda":
        return True
    import torch

    if exp.compute.workers == 1 and sweep.resources.gpus == 0:
        raise SpecError("resources.gpus: 0 with compute.device 'cuda'; give each trial a GPU (e.g. 1)")
    here = torch.cuda.is_available()
    if exp.compute.workers > 1 and not here:
        raise SpecError(
            "compute.workers: multi-worker cuda trials prepare and evaluate their models in the trial "
            "process, which Ray may place on this CPU-only node; run the driver on a GPU node"
        )
    return here


def _prepare_remote(exp_dict: dict[str, Any]) -> None:
    prepare(parse_experiment(exp_dict, check_files=False))
