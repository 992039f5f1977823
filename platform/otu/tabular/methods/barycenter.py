"""W₂-barycenter feature unlearning (:mod:`otu.tabular.barycenter`): fit the group maps on the
training split — of the features, or of the E[Y|X,Z] log-odds — and transport both splits."""

from __future__ import annotations

from otu.family import TOTAL_STEPS, RunContext
from otu.tabular.barycenter import (
    GroupMaps,
    Transported,
    fit_empirical,
    fit_gaussian,
    transport,
    transport_cost,
)
from otu.tabular.representations import prediction_scores
from otu.tabular.spec import Barycenter, TabularJob
from otu.tabular.tables import FeatureTask


def run(job: TabularJob, prepared: FeatureTask, ctx: RunContext) -> Transported:
    method: Barycenter = job.method
    moved = transported(method, prepared)
    ctx.reporter.on_step(0, {"t": method.t, "transport_cost": transport_cost(moved, prepared.z_train), TOTAL_STEPS: 1})
    return moved


def transported(method: Barycenter, task: FeatureTask) -> Transported:
    """The features (or scores) of ``task`` and their images under ``method``'s maps, at ``method.t``."""
    source = (
        task.features
        if method.apply_to == "features"
        else prediction_scores(task, method.score_c, method.score_with_group)
    )
    maps: GroupMaps
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
            seed=task.seed,
        )
    return transport(source, task.z_train, task.z_test, maps, method.t)
