"""The tabular family (see :class:`otu.family.Family`): two tasks, told apart by the method's class.

* a :class:`~otu.tabular.spec.FeatureMethod` (``barycenter``) unlearns a feature of a table or of
  digits embeddings: prepared = a :class:`FeatureTask`; the original "model" is the untouched
  features; ``unlearn`` returns a :class:`Transported` (features and their barycenter images,
  interpolated at t);
* a :class:`~otu.tabular.spec.PointMethod` (``marginal``, ``finetune``) forgets digits training
  points: prepared = a :class:`DigitsTask` with the original classifier and the retain-only oracle;
  ``unlearn`` returns the unlearned classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from threadpoolctl import threadpool_limits
from torch import nn

from otu.classifiers.membership import audit, shadow_tasks
from otu.family import Attacks, Family, Membership, RunContext, ShadowPlan
from otu.tabular import membership as point_membership
from otu.tabular import plots as figures
from otu.tabular.attacks import probe_leakage
from otu.tabular.barycenter import Transported
from otu.tabular.methods.barycenter import transported
from otu.tabular.metrics import classifier_metrics, feature_metrics
from otu.tabular.networks import DigitsTask, digits_task
from otu.tabular.representations import digits_feature_task
from otu.tabular.spec import METHODS, Barycenter, FeatureMethod, TabularJob
from otu.tabular.tables import Features, FeatureTask, load_table

Prepared: TypeAlias = FeatureTask | DigitsTask
Model: TypeAlias = Features | Transported | nn.Module


class TabularFamily(Family, Attacks, Membership):
    def prepare(self, job: TabularJob, ctx: RunContext) -> Prepared:
        """The method's task: a :class:`FeatureTask` (table, or embeddings of the cached digits
        classifier) or a :class:`DigitsTask` (classifiers cached under ``ctx.cache_dir``)."""
        # numpy/scipy BLAS (barycenters, sklearn) on as many threads as torch: oversubscribed
        # OpenBLAS threads slow small eigendecompositions by an order of magnitude.
        threadpool_limits(ctx.threads)
        if not isinstance(job.method, FeatureMethod):
            return digits_task(job.data, job.model, ctx.seed, ctx.cache_dir)
        if job.data.source == "file":
            return load_table(job.data, ctx.seed)
        return digits_feature_task(job.data, job.model, ctx.seed, ctx.cache_dir)

    def reference_models(self, prepared: Prepared) -> dict[str, Model]:
        if isinstance(prepared, FeatureTask):
            return {"original": prepared.features}
        return {"original": prepared.original, "retrained": prepared.retrained}

    def unlearn(self, job: TabularJob, prepared: Prepared, ctx: RunContext) -> Model:
        """Run ``job.method`` on the task ``prepare`` made for it."""
        return METHODS[job.method.name].load()(job, prepared, ctx)

    def evaluate(self, job: TabularJob, prepared: Prepared, model: Model) -> dict[str, float]:
        if isinstance(prepared, DigitsTask):
            return classifier_metrics(prepared.splits, model)
        features = model.features if isinstance(model, Transported) else model
        return feature_metrics(prepared, features, job.eval, prepared.seed)

    def attack_labels(self, job: TabularJob) -> list[str]:
        return [a.label for a in job.eval.robustness]

    def attacked(self, job: TabularJob, prepared: Prepared, model: Model, seed: int) -> dict[str, tuple[dict, dict]]:
        """Feature unlearning's k-shot probes (:mod:`otu.tabular.attacks`) of ``model``'s features."""
        if not isinstance(prepared, FeatureTask):
            raise TypeError("eval.robustness probes feature unlearning (the checks refuse it for point methods)")
        features = model.features if isinstance(model, Transported) else model
        return {a.label: (probe_leakage(prepared, features, a, job.eval, seed), {}) for a in job.eval.robustness}

    def shadow_plan(self, job: TabularJob, prepared: Prepared, seed: int) -> ShadowPlan:
        """``eval.membership``'s shadows (:func:`otu.classifiers.membership.shadow_tasks`; data-point
        unlearning only: :func:`otu.tabular.spec.rules` refuses an attack on feature unlearning)."""
        return ShadowPlan(shadow_tasks(job.eval.membership, job.method), job.eval.membership.parallel)

    def train_shadow(
        self, job: TabularJob, prepared: Prepared, task: dict[str, Any], ctx: RunContext
    ) -> dict[str, np.ndarray]:
        return point_membership.train_shadow(job, _digits(prepared), task, ctx)

    def membership(
        self,
        job: TabularJob,
        prepared: Prepared,
        models: Mapping[str, Any],
        shadows: list[dict[str, Any]],
        out_dir: Path,
    ) -> dict[str, dict[str, float]]:
        """U-LiRA or challenge rows per model (:func:`otu.classifiers.membership.audit`):
        ``membership-<attack>.parquet`` (one row per forget example) and, with ``eval.plots``,
        ``plots/ulira_roc.png`` or ``plots/epsilon_histogram.png``."""
        splits = _digits(prepared).splits
        return audit(job.eval.membership, job.method, models, splits, shadows, out_dir, job.eval.plots)

    def plots(self, job: TabularJob, prepared: Prepared, models: dict[str, Model], out_dir: Path) -> list[Path]:
        """``frontier.png`` (barycenter: both variants' frontiers over t) or ``accuracies.png``."""
        if isinstance(prepared, DigitsTask):
            metrics = {name: self.evaluate(job, prepared, model) for name, model in models.items()}
            return [figures.accuracies(metrics, out_dir / "accuracies.png")]
        unlearned = models["unlearned"]
        if not isinstance(unlearned, Transported):  # the frontier over t is the barycenter's
            return []
        return [_frontier(job, prepared, unlearned, out_dir / "frontier.png")]


def _digits(prepared: Prepared) -> DigitsTask:
    if not isinstance(prepared, DigitsTask):
        raise TypeError("eval.membership audits data-point unlearning (the spec refuses it for feature methods)")
    return prepared


def _frontier(job: TabularJob, task: FeatureTask, unlearned: Transported, path: Path) -> Path:
    """Utility against leakage over t for the run's barycenter variant and the other one."""
    method: Barycenter = job.method
    other = "empirical" if method.variant == "gaussian" else "gaussian"
    moved = {method.variant: unlearned, other: transported(method.model_copy(update={"variant": other}), task)}
    curves = {
        variant: [
            {"t": float(t), **feature_metrics(task, image.at(float(t)), job.eval, task.seed)}
            for t in np.linspace(0.0, 1.0, job.eval.frontier_points)
        ]
        for variant, image in moved.items()
    }
    return figures.frontier(curves, method.variant, unlearned.t, path)


FAMILY = TabularFamily()
