"""Pareto front and sweep report on hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from otu.report.pareto import pareto_front, pareto_mask


def test_pareto_mask_max_min():
    # objective 1 maximised, objective 2 minimised
    values = np.array([[0.9, 0.10], [0.8, 0.05], [0.7, 0.20], [0.9, 0.10], [0.95, 0.30]])
    mask = pareto_mask(values, ["max", "min"])
    assert mask.tolist() == [True, True, False, True, True]


def test_pareto_front_ignores_failed_and_incomplete_rows():
    table = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["TERMINATED", "TERMINATED", "ERROR", "TERMINATED"],
            "acc": [0.9, 0.8, 1.0, np.nan],
            "fs": [0.2, 0.1, 0.0, 0.0],
        }
    )
    front = pareto_front(table, ["acc", "fs"], ["max", "min"])
    assert sorted(front["trial_id"]) == ["a", "b"]


def test_brute_force_agreement_on_random_points():
    rng = np.random.default_rng(0)
    values = rng.random((60, 3))
    modes = ["max", "min", "max"]
    mask = pareto_mask(values, modes)
    signed = values * np.array([1, -1, 1])
    for i in range(len(values)):
        dominated = any(
            np.all(signed[j] >= signed[i]) and np.any(signed[j] > signed[i]) for j in range(len(values))
        )
        assert mask[i] == (not dominated)
