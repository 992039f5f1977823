r"""Rows and derived metrics of attacked models (``eval.robustness``), for any family that attacks.

For a model M, an attack a and a forget metric m (a name starting ``forget``: ``forget_rouge``,
``forgetting_score``), with every term
taken on the attack's evaluation items (a relearn on part of the forget set is scored on the
other part, for the clean models too):

.. math:: \mathrm{recovery}_m^a(M) = \frac{m(a(M)) - m(M)}{m(\mathrm{original}) - m(M)}

— the share of what M forgot that the attack brings back (0: none, 1: all of it; NaN where M
forgot nothing). The retrained oracle's recovery is the control: an attack that re-teaches the
oracle as much as the unlearned model shows no hidden knowledge. ``metrics.json`` gains a row
``<model>@<label>`` per attack, and each model's own row ``<metric>@<label>`` and
``recovery_<metric>@<label>`` (sweep objectives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Attacked = Mapping[str, Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]]]
"""model → attack label → (the attacked copy's metrics, the model's own on the same items)."""


def derived_names(metrics: list[str] | tuple[str, ...], labels: list[str]) -> list[str]:
    """The metric names an experiment with attacks ``labels`` adds (sweep objectives may use them)."""
    names = [f"{m}@{label}" for label in labels for m in metrics]
    return names + [f"recovery_{m}@{label}" for label in labels for m in metrics if m.startswith("forget")]


def with_attacks(metrics: Mapping[str, dict[str, float]], attacked: Attacked) -> dict[str, dict[str, float]]:
    """``metrics`` with the ``<model>@<label>`` rows and each model's derived metrics."""
    out = {model: dict(row) for model, row in metrics.items()}
    for model, per_label in attacked.items():
        for label, (after, before) in per_label.items():
            out[f"{model}@{label}"] = dict(after)
            out[model] |= {f"{m}@{label}": v for m, v in after.items()}
            if model == "original" or "original" not in attacked:
                continue
            original = attacked["original"][label][1]
            for m, value in after.items():
                if m.startswith("forget"):
                    out[model][f"recovery_{m}@{label}"] = recovery(value, before[m], original[m])
    return out


def recovery(attacked: float, clean: float, original: float) -> float:
    """(attacked − clean) / (original − clean); NaN where the model forgot nothing."""
    gap = original - clean
    return (attacked - clean) / gap if gap != 0 and math.isfinite(gap) else math.nan


def tables(metrics: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[str], list[str]]:
    """What a report shows: the models (no ``<model>@<label>`` rows), their clean metric names, and
    the attack rows — each attack's forget metrics, then their recovery (empty without attacks)."""
    models = [m for m in metrics if "@" not in m]
    names = list(dict.fromkeys(k for m in models for k in metrics[m] if "@" not in k))
    labels = list(dict.fromkeys(m.partition("@")[2] for m in metrics if "@" in m))
    forget = [n for n in names if n.startswith("forget")]
    rows = [f"{n}@{label}" for label in labels for n in forget]
    return models, names, rows + [f"recovery_{n}@{label}" for label in labels for n in forget]
