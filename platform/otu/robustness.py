r"""Rows and derived metrics of attacked models (``eval.robustness``), for any family that attacks.

For a model M, an attack a and a forget metric m (a name starting ``forget``: ``forget_rouge``,
``forgetting_score``), with every term
taken on the attack's evaluation items (a relearn on part of the forget set is scored on the
other part, for the clean models too):

.. math:: \mathrm{recovery}_m^a(M) = \frac{m(a(M)) - m(M)}{m(\mathrm{original}) - m(M)}

— the share of what M forgot that the attack brings back (0: none, 1: all of it; NaN where M
forgot nothing); an attack reporting metrics the clean models have not (a multiple-choice probe)
has none. The retrained oracle's recovery is the control: an attack that re-teaches the
oracle as much as the unlearned model shows no hidden knowledge. ``metrics.json`` gains a row
``<model>@<label>`` per attack, and each model's own row ``<metric>@<label>`` and
``recovery_<metric>@<label>`` (sweep objectives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Attacked = Mapping[str, Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]]]
"""model → attack label → (the attacked copy's metrics, the model's own on the same items)."""


def derived_names(attacks: list[tuple[str, tuple[str, ...], bool]]) -> list[str]:
    """The metric names an experiment adds for its attacks (sweep objectives may use them), given
    per attack its label, the metrics it reports and whether it has recovery ratios (an attack that
    reports metrics of its own, like a multiple-choice probe, has none: no clean value to compare)."""
    names = [f"{m}@{label}" for label, metrics, _ in attacks for m in metrics]
    ratios = [
        f"recovery_{m}@{label}" for label, metrics, has in attacks if has for m in metrics if m.startswith("forget")
    ]
    return names + ratios


def attacked_metrics(per_label: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]]) -> dict[str, float]:
    """One model's ``<metric>@<label>`` from its attacks' results (label → (attacked, clean))."""
    return {f"{m}@{label}": v for label, (after, _) in per_label.items() for m, v in after.items()}


def with_attacks(metrics: Mapping[str, dict[str, float]], attacked: Attacked) -> dict[str, dict[str, float]]:
    """``metrics`` with the ``<model>@<label>`` rows and each model's derived metrics."""
    out = {model: dict(row) for model, row in metrics.items()}
    for model, per_label in attacked.items():
        out[model] |= attacked_metrics(per_label)
        for label, (after, before) in per_label.items():
            out[f"{model}@{label}"] = dict(after)
            if model == "original" or "original" not in attacked:
                continue
            original = attacked["original"][label][1]
            for m, value in after.items():
                if m.startswith("forget") and m in before:
                    out[model][f"recovery_{m}@{label}"] = recovery(value, before[m], original[m])
    return out


def recovery(attacked: float, clean: float, original: float) -> float:
    """(attacked − clean) / (original − clean); NaN where the model forgot nothing."""
    gap = original - clean
    return (attacked - clean) / gap if gap != 0 and math.isfinite(gap) else math.nan


def tables(everything: Mapping[str, object]) -> tuple[list[str], list[str], list[str]]:
    """What a report shows: the models (no ``<model>@<label>`` rows), their clean metric names, and
    the attack rows — each attack's forget metrics, then their recovery (empty without attacks).
    Entries of ``metrics.json`` that are not model rows (a request chain's ``requests`` list) are skipped."""
    metrics: dict[str, Mapping[str, float]] = {k: v for k, v in everything.items() if isinstance(v, Mapping)}
    models = [m for m in metrics if "@" not in m]
    names = list(dict.fromkeys(k for m in models for k in metrics[m] if "@" not in k))
    rows = list(dict.fromkeys(f"{n}@{row.partition('@')[2]}" for row in metrics if "@" in row for n in metrics[row]))
    rows = [r for r in rows if r.startswith("forget")]
    return models, names, rows + [f"recovery_{r}" for r in rows if any(f"recovery_{r}" in metrics[m] for m in models)]
