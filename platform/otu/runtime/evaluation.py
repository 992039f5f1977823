"""Evaluation actors: a pool of Ray actors that evaluate checkpoints while unlearning goes on.

Each actor prepares a family's evaluation data once per (task, seed) — from the on-disk cache the
driver filled — and then evaluates any checkpoint sent to it: a snapshot of a live model taken by
``ray.put`` at submission time, or a checkpoint directory the family can load (``load_unlearned``,
for DeepSpeed runs). A torch module is sent whole once per run; later snapshots are its state as
numpy arrays, which ``ray.put`` copies in one pass and the actor reads from the object store without
unpickling, then loads into a fresh copy of the module. Submission never blocks the training loop;
results are collected as they complete.

In a sweep the driver starts one named pool for all trials (:func:`start_pool`); a trial or a
single ``otu run`` attaches to it by name (:class:`CheckpointEvaluator`).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.util import ActorPool

from otu.family import Attacks, Family, SavedModels
from otu.registry import family_api
from otu.robustness import attacked_metrics
from otu.spec import Experiment, content_hash, parse_experiment

NAMESPACE = "otu"
MODULES_KEPT = 4  # module copies an actor keeps (one per run it serves, most recent first)


@ray.remote
class Evaluator:
    """Holds prepared data per (task, seed) and evaluates checkpoints with the family's metrics."""

    def __init__(self, threads: int = 1):
        torch.set_num_threads(threads)
        self._prepared: dict[str, Any] = {}
        self._experiments: dict[str, tuple[Experiment, Family, Any]] = {}
        self._modules: OrderedDict[str, torch.nn.Module] = OrderedDict()

    def evaluate(
        self,
        exp_key: str,
        exp_dict: dict[str, Any],
        step: int,
        checkpoint: Any,
        module: list[ray.ObjectRef] | None = None,
    ) -> tuple[int, dict[str, float]]:
        """Metrics of ``checkpoint``: a model, a checkpoint directory, or (with ``module``, the run's
        module in a list so that Ray passes the reference) that module's state as numpy arrays."""
        exp, api, prepared = self._context(exp_key, exp_dict)
        if isinstance(checkpoint, Path):
            if not isinstance(api, SavedModels):
                raise TypeError(f"the {exp.task.family} family cannot load a checkpoint directory")
            model = api.load_unlearned(exp.job(), prepared, checkpoint)
        elif module is not None:
            model = copy.deepcopy(self._module(exp_key, module[0]))  # families memoise per model object
            with warnings.catch_warnings():  # read-only arrays: load_state_dict only copies from them
                warnings.simplefilter("ignore", UserWarning)
                model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.items()})
        else:
            model = checkpoint
        metrics = api.evaluate(exp.job(), prepared, model)
        if exp.dynamics.attacks and isinstance(api, Attacks):
            metrics |= attacked_metrics(api.attacked(exp.job(), prepared, model, exp.seed))
        return step, {k: float(v) for k, v in metrics.items()}

    def _module(self, exp_key: str, ref: ray.ObjectRef) -> torch.nn.Module:
        if exp_key not in self._modules:
            self._modules[exp_key] = ray.get(ref)
            while len(self._modules) > MODULES_KEPT:
                self._modules.popitem(last=False)
        self._modules.move_to_end(exp_key)
        return self._modules[exp_key]

    def _context(self, exp_key: str, exp_dict: dict[str, Any]) -> tuple[Experiment, Family, Any]:
        """The experiment (schema-validated only: the driver checked its files), its family and its
        prepared data, once per experiment."""
        if exp_key not in self._experiments:
            from otu.runtime.experiment import prepare

            exp = parse_experiment(exp_dict, check_files=False)
            data_key = content_hash([exp_dict["task"], exp_dict["seed"], exp_dict["tracking"]["cache_dir"]])
            if data_key not in self._prepared:
                self._prepared[data_key] = prepare(exp)
            self._experiments[exp_key] = (exp, family_api(exp.task.family), self._prepared[data_key])
        return self._experiments[exp_key]


def pool_names(prefix: str, size: int) -> list[str]:
    return [f"{prefix}-eval-{i}" for i in range(size)]


def start_pool(prefix: str, size: int, cpus: float = 0.0) -> list[ray.actor.ActorHandle]:
    """Start (or find) ``size`` named evaluator actors; they live as long as the driver's Ray job."""
    return [
        Evaluator.options(  # type: ignore[attr-defined]  # added by @ray.remote
            name=name, namespace=NAMESPACE, num_cpus=cpus, get_if_exists=True
        ).remote()
        for name in pool_names(prefix, size)
    ]


class CheckpointEvaluator:
    """The training side: ``submit`` a checkpoint every ``every`` steps, ``drain`` the results."""

    def __init__(self, exp: Experiment, actors: list[ray.actor.ActorHandle]):
        self.exp_key, self.exp_dict = exp.hash, exp.to_dict()
        self.every = exp.dynamics.every
        self.pool = ActorPool(actors)
        self._module: list[ray.ObjectRef] | None = None

    @classmethod
    def attach(cls, exp: Experiment, prefix: str) -> CheckpointEvaluator:
        names = pool_names(prefix, exp.dynamics.pool_size)
        return cls(exp, [ray.get_actor(n, namespace=NAMESPACE) for n in names])

    def wants(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def submit(self, step: int, checkpoint: Any) -> None:
        """Snapshot ``checkpoint`` now and queue it for the next free actor."""
        module = None
        if isinstance(checkpoint, Path):
            snapshot: Any = checkpoint
        elif (arrays := state_arrays(checkpoint)) is not None:
            if self._module is None:
                self._module = [ray.put(checkpoint)]
            snapshot, module = ray.put(arrays), self._module
        else:
            snapshot = ray.put(checkpoint)
        args = (self.exp_key, self.exp_dict, step, snapshot, module)
        self.pool.submit(lambda actor, a: actor.evaluate.remote(*a), args)

    def ready(self) -> list[tuple[int, dict[str, float]]]:
        """Results finished so far, without waiting."""
        out = []
        while self.pool.has_next():
            try:
                out.append(self.pool.get_next_unordered(timeout=0))
            except TimeoutError:
                break
        return out

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """Wait for every submitted checkpoint's metrics."""
        out = []
        while self.pool.has_next():
            out.append(self.pool.get_next_unordered())
        return out


def state_arrays(model: Any) -> dict[str, np.ndarray] | None:
    """A CPU torch module's state as numpy views (no copy); None for anything else (bf16 included)."""
    if not isinstance(model, torch.nn.Module):
        return None
    state = model.state_dict()
    if any(t.device.type != "cpu" or t.dtype == torch.bfloat16 for t in state.values()):
        return None
    return {k: t.detach().numpy() for k, t in state.items()}
