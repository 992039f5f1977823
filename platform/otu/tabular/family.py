"""Entry points of the tabular family (see :class:`otu.registry.FamilyAPI`).

* ``barycenter`` (feature unlearning) on a table or on digits embeddings: prepared = a
  :class:`FeatureTask`; the original "model" is the untouched features; ``unlearn`` returns a
  :class:`Transported` (features and their barycenter images, interpolated at t).
* ``marginal`` / ``finetune`` (data-point unlearning) on digits: prepared = a :class:`DigitsTask`
  with the original classifier and the retrained (retain-only) oracle; ``unlearn`` returns the
  unlearned classifier.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from otu.registry import TOTAL_STEPS, Reporter
from otu.spec import Experiment
from otu.tabular import plots as figures
from otu.tabular.barycenter import (
    Transported,
    fit_empirical,
    fit_gaussian,
    transport,
    transport_cost,
)
from otu.tabular.marginal import unlearn_marginal
from otu.tabular.metrics import classifier_metrics, feature_metrics
from otu.tabular.networks import cache_entry, digits_network
from otu.tabular.representations import digits_feature_task, prediction_scores
from otu.tabular.spec import (
    FEATURE_METHODS,
    Barycenter,
    Finetune,
    Marginal,
    TabularData,
    TabularEval,
    TabularModel,
)
from otu.tabular.tables import DigitsSplits, Features, FeatureTask, digits_splits, load_table


@dataclass(frozen=True)
class DigitsTask:
    """Digits splits with the original classifier and the retain-only oracle."""

    splits: DigitsSplits
    original: nn.Module
    retrained: nn.Module


Prepared = FeatureTask | DigitsTask
Model = Features | Transported | nn.Module


def prepare(exp: Experiment, cache_dir: Path) -> Prepared:
    # numpy/scipy BLAS (barycenters, sklearn) on as many threads as torch: oversubscribed
    # OpenBLAS threads slow small eigendecompositions by an order of magnitude.
    threadpool_limits(exp.compute.threads)
    data = cast(TabularData, exp.task.data)
    model = cast(TabularModel, exp.task.model)
    if exp.method.name in FEATURE_METHODS:  # type: ignore[attr-defined]
        if data.source == "file":
            return load_table(data, exp.seed)
        return digits_feature_task(data, model, exp.seed, cache_dir)
    splits = digits_splits(data, exp.seed)
    entry = cache_entry(data, model, exp.seed, cache_dir)
    return DigitsTask(
        splits=splits,
        original=digits_network("original", splits, model, exp.seed, entry),
        retrained=digits_network("retrained", splits, model, exp.seed, entry),
    )


def reference_models(prepared: Prepared) -> dict[str, Model]:
    if isinstance(prepared, FeatureTask):
        return {"original": prepared.features}
    return {"original": prepared.original, "retrained": prepared.retrained}


def unlearn(exp: Experiment, prepared: Prepared, report: Reporter, checkpoint_dir: Path) -> Model:
    method = exp.method
    if isinstance(method, Barycenter):
        return _barycenter(method, cast(FeatureTask, prepared), exp.seed, report)
    method = cast(Marginal | Finetune, method)
    task = cast(DigitsTask, prepared)
    splits = task.splits
    forget = None
    if isinstance(method, Marginal) and method.gamma > 0:
        forget = (splits.images[splits.forget], method.forget_batch_size)
    model = unlearn_marginal(
        copy.deepcopy(task.original),
        (splits.images[splits.retain], splits.labels[splits.retain]),
        forget,
        gamma=method.gamma if forget is not None else 0.0,
        epochs=method.epochs,
        lr=method.lr,
        batch_size=method.batch_size,
        seed=exp.seed,
        report=report,
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint_dir / "model.pt")
    return model


def _silent(step: int, metrics, model=None) -> None:
    """A reporter that drops what it is given (the frontier's extra variant is no run)."""


def _barycenter(method: Barycenter, task: FeatureTask, seed: int, report: Reporter) -> Transported:
    """Fit the group maps on the training split (features, or E[Y|X,Z] log-odds) and transport."""
    source = task.features if method.apply_to == "features" else prediction_scores(
        task, method.score_c, method.score_with_group
    )
    if method.variant == "gaussian":
        maps = fit_gaussian(
            source.train, task.z_train, cov_reg=method.cov_reg, max_iter=method.bures_max_iter, tol=method.tol
        )
    else:
        maps = fit_empirical(
            source.train,
            task.z_train,
            support_size=method.support_size,
            entropic_reg=method.entropic_reg,
            max_iter=method.support_max_iter,
            tol=method.tol,
            seed=seed,
        )
    moved = transport(source, task.z_train, task.z_test, maps, method.t)
    report(0, {"t": method.t, "transport_cost": transport_cost(moved, task.z_train), TOTAL_STEPS: 1})
    return moved


def evaluate(exp: Experiment, prepared: Prepared, model: Model) -> dict[str, float]:
    if isinstance(model, nn.Module):
        return classifier_metrics(cast(DigitsTask, prepared).splits, model)
    features = model.features if isinstance(model, Transported) else model
    return feature_metrics(cast(FeatureTask, prepared), features, cast(TabularEval, exp.eval), exp.seed)


def plots(exp: Experiment, prepared: Prepared, models: dict[str, Model], out_dir: Path) -> list[Path]:
    """``frontier.png`` (barycenter: both variants' frontiers over t) or ``accuracies.png``."""
    unlearned = models["unlearned"]
    if isinstance(unlearned, Transported):
        ev = cast(TabularEval, exp.eval)
        task = cast(FeatureTask, prepared)
        method = cast(Barycenter, exp.method)
        other = "empirical" if method.variant == "gaussian" else "gaussian"
        moved = {
            method.variant: unlearned,
            other: _barycenter(method.model_copy(update={"variant": other}), task, exp.seed, _silent),
        }
        curves = {
            variant: [
                {"t": float(t), **feature_metrics(task, transported.at(float(t)), ev, exp.seed)}
                for t in np.linspace(0.0, 1.0, ev.frontier_points)
            ]
            for variant, transported in moved.items()
        }
        return [figures.frontier(curves, method.variant, unlearned.t, out_dir / "frontier.png")]
    metrics = {name: evaluate(exp, prepared, model) for name, model in models.items()}
    return [figures.accuracies(metrics, out_dir / "accuracies.png")]
