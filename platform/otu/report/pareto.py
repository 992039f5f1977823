"""Non-dominated (Pareto-optimal) trials over several objectives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (n × k), each column maximised or
    minimised per ``modes``. Row i is dominated if some row j is at least as good on every objective
    and strictly better on one."""
    signs = np.array([1.0 if m == "max" else -1.0 for m in modes])
    score = values * signs  # larger is better everywhere
    n = len(score)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        better_eq = np.all(score >= score[i], axis=1)
        strictly = np.any(score > score[i], axis=1)
        mask[i] = not np.any(better_eq & strictly)
    return mask


def pareto_front(table: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> pd.DataFrame:
    """The finished trials of ``table`` that no other finished trial dominates."""
    done = finished(table, metrics)
    if done.empty:
        return done
    return done[pareto_mask(done[list(metrics)].to_numpy(dtype=float), modes)]


def finished(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    if table.empty or any(m not in table.columns for m in metrics):
        return table.iloc[0:0]
    done = table[table["status"] == "TERMINATED"]
    return done.dropna(subset=list(metrics))
