"""Environment checks of the tabular family (run once, in the driver)."""

from __future__ import annotations

import numpy as np

from otu.errors import DataError, SpecError
from otu.family import RunContext
from otu.tabular.spec import PointMethod, TabularJob, TabularProbe


def check(job: TabularJob, ctx: RunContext) -> None:
    """Method/source compatibility, then (file source) read and encode the table so that missing
    columns, garbage in numeric columns and degenerate groups fail before any work; probes' shots
    fit the training split. Tables and digits are imported only where the spec reads them, so that
    ``otu validate`` of a spec that reads neither imports no torch or scikit-learn."""
    if isinstance(job.method, PointMethod) and job.data.source != "digits":
        raise SpecError(
            f"method.name: {job.method.name!r} forgets training points of the digits classifier and "
            f"needs task.data.source 'digits' (got {job.data.source!r})"
        )
    if isinstance(job.method, PointMethod) and job.eval.robustness:
        raise SpecError(
            f"eval.robustness: the tabular probes attack feature unlearning; {job.method.name!r} forgets "
            "training points (no attack for it yet)"
        )
    if isinstance(job.method, PointMethod) and job.eval.membership.attack == "ulira":
        from otu.tabular.tables import digits_splits

        job.eval.membership.check_forget_size(len(digits_splits(job.data, ctx.seed).forget), "images")
    task = None
    if job.data.source == "file":
        from otu.tabular.tables import load_table

        task = load_table(job.data, ctx.seed)
    if job.eval.robustness and not isinstance(job.method, PointMethod):
        if task is None:
            from otu.tabular.tables import digits_splits

            splits = digits_splits(job.data, ctx.seed)
            n_train, n_groups = len(splits.retain) + len(splits.forget), len(np.unique(splits.ink))
        else:
            n_train, n_groups = len(task.z_train), len(task.groups)
        for attack in job.eval.robustness:
            check_shots(attack, n_train, n_groups)


def check_shots(attack: TabularProbe, n_train: int, n_groups: int) -> None:
    """DataError unless the attacker's samples can hold every group and leave training samples out."""
    if not n_groups <= attack.shots < n_train:
        raise DataError(
            f"eval.robustness ({attack.label}).shots: {attack.shots} must be at least the {n_groups} groups and "
            f"fewer than the {n_train} training samples"
        )
