"""Shadow models of a family's membership attack (``eval.membership``), trained as Ray tasks.

The family plans the shadows (:class:`~otu.family.ShadowPlan`: JSON-able task descriptions), trains
one (:meth:`~otu.family.Membership.train_shadow`) and scores the models from all of them
(:meth:`~otu.family.Membership.membership`); this module only fans the training out. The prepared
task goes into the object store once (``ray.put``) and every task reads that one copy; at most
``plan.parallel`` tasks (else as many as Ray's CPUs take) run at once, each asking for
``compute.threads`` CPUs. Each result is written to the cache as it arrives —
``cache_dir/shadows-<task hash>/<shadow hash>.npz``, keyed by the task section, the seed and the
shadow's description — so a killed evaluation retrains only the shadows it had not finished, and a
sweep's trials share the shadows that do not depend on the method.

Without a running Ray the driver starts otu's embedded local instance (:func:`otu.runtime.ray_session.init_ray`),
as ``otu sweep`` does; a driver attached to a cluster (``--address``, a Ray job) sends the tasks there.
Inside a Ray task or actor (a Tune trial) the shadows train in that process, one after another: the
trial holds its CPUs already, and tasks asking for more could wait for ever while sibling trials hold
the rest.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray

from otu.cache import content_hash, verified_file, write_verified_file
from otu.family import Membership, RunContext, ShadowPlan
from otu.spec import Experiment

Result = dict[str, np.ndarray]


def membership_metrics(
    exp: Experiment, api: Membership, prepared: Any, models: Mapping[str, Any], out_dir: Path
) -> dict[str, dict[str, float]]:
    """Per model name, the metrics of ``exp``'s membership attack ({} when it plans no shadows)."""
    job = exp.job()
    plan = api.shadow_plan(job, prepared, exp.seed)
    if not plan.tasks:
        return {}
    shadows = train_shadows(exp, api, prepared, plan)
    rows = api.membership(job, prepared, models, shadows, out_dir)
    return {name: {k: float(v) for k, v in row.items()} for name, row in rows.items()}


def shadow_dir(exp: Experiment) -> Path:
    """Where ``exp``'s shadow results are cached: they depend on the task section and the seed (and
    each on its own description)."""
    key = content_hash({"task": exp.task.model_dump(mode="json"), "seed": exp.seed})
    return Path(exp.tracking.cache_dir).resolve() / f"shadows-{key}"


def train_shadows(
    exp: Experiment,
    api: Membership,
    prepared: Any,
    plan: ShadowPlan,
    on_result: Callable[[int], None] | None = None,
) -> list[Result]:
    """Every planned shadow's result, in plan order: cached ones read back, the others trained (as Ray
    tasks, or in this process inside a Ray worker) and cached one by one as they finish
    (``on_result(done)`` after each)."""
    folder = shadow_dir(exp)
    paths = [folder / f"{content_hash(task)}.npz" for task in plan.tasks]
    results: dict[int, Result] = {i: _read(p) for i, p in enumerate(paths) if verified_file(p)}
    missing = [i for i in range(len(plan.tasks)) if i not in results]
    if missing:
        run = _run_here if inside_ray_worker() else _run_on_ray
        for i, result in run(exp, api, prepared, plan, missing):
            write_verified_file(paths[i], partial(_write, result=result))
            results[i] = result
            if on_result is not None:
                on_result(len(results))
    return [results[i] for i in range(len(plan.tasks))]


def _run_on_ray(
    exp: Experiment, api: Membership, prepared: Any, plan: ShadowPlan, todo: list[int]
) -> Iterator[tuple[int, Result]]:
    """Yield ``(index, result)`` as the tasks ``todo`` finish, at most ``plan.parallel`` in flight."""
    from otu.runtime.ray_session import init_ray

    init_ray()
    ctx = exp.context()
    ctx = replace(ctx, cache_dir=ctx.cache_dir.resolve())
    job_ref, prepared_ref = ray.put(exp.job()), ray.put(prepared)
    remote = _train_one.options(num_cpus=exp.compute.threads)
    limit = plan.parallel or len(todo)
    queue, pending = list(todo), dict[ray.ObjectRef, int]()
    while queue or pending:
        while queue and len(pending) < limit:
            i = queue.pop(0)
            pending[remote.remote(exp.task.family, job_ref, prepared_ref, plan.tasks[i], ctx)] = i
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


def inside_ray_worker() -> bool:
    """Whether this process is a Ray task or actor (a Tune trial, a Ray Train worker): it holds its
    CPUs already, and tasks asking for more could wait for ever on a cluster its siblings fill."""
    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _run_here(
    exp: Experiment, api: Membership, prepared: Any, plan: ShadowPlan, todo: list[int]
) -> Iterator[tuple[int, Result]]:
    """Train the shadows ``todo`` one after another in this process (inside a trial)."""
    ctx = exp.context()
    for i in todo:
        yield i, {k: np.asarray(v) for k, v in api.train_shadow(exp.job(), prepared, plan.tasks[i], ctx).items()}


@ray.remote
def _train_one(family: str, job: Any, prepared: Any, task: dict[str, Any], ctx: RunContext) -> Result:
    """One shadow in a Ray worker (``job`` and ``prepared`` arrive from the object store)."""
    from otu.registry import family_api
    from otu.runtime.launch import configure_process

    configure_process(ctx.compute)
    api = cast(Membership, family_api(family))
    return {k: np.asarray(v) for k, v in api.train_shadow(job, prepared, task, ctx).items()}


def _write(path: Path, result: Result) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **result)
    path.write_bytes(buffer.getvalue())


def _read(path: Path) -> Result:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
