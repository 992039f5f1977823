"""Every method of every family's table, end to end on a tiny spec through
:func:`otu.runtime.experiment.run_experiment`: the run writes finite metrics for every evaluated
model and one ``steps.jsonl`` row per loop step.

A case is (family, spec path, overrides); the overrides replace whole sections where a method's
keys differ (``method``). Cases of one family share a cache, so its data and reference models are
prepared once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from otu.registry import family_spec
from otu.runtime.experiment import run_experiment
from otu.spec import load_experiment

REPO = Path(__file__).resolve().parents[1]

LLM_SPEC = "sweeps/experiments/optout_tiny.yaml"
LLM_STEPS = 2
LLM_FAST = {
    "task.data.sizes": {"targets": 2, "neighbours": 2, "perturbed": 2, "world": 8},
    "task.data.max_length": 48,
    "task.model.tiny": {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "vocab": 300},
    "task.model.epochs": 2,
    "eval": {"max_new_tokens": 4, "world_max_new_tokens": 4, "max_items": 4, "plots": False},
    "compute": {"workers": 1},
}


def llm(method: dict) -> dict:
    return LLM_FAST | {"method": {"steps": LLM_STEPS, "batch_size": 4, "lr": 1e-3, **method}}


CASES: list[tuple[str, str, dict]] = [
    *[("llm", LLM_SPEC, llm({"name": name})) for name in family_spec("llm").methods],
    *[
        ("llm", LLM_SPEC, llm({"name": "optout", "regulariser": kind}))
        for kind in ("euclidean", "manhattan", "cosine")
    ],
]


def case_id(case: tuple[str, str, dict]) -> str:
    family, _, overrides = case
    method = overrides["method"]
    return "-".join(
        [family, method["name"], *([method["regulariser"]] if "regulariser" in method else [])]
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("methods-cache")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_method_runs_end_to_end(case, cache_dir, tmp_path):
    family, spec, overrides = case
    exp = load_experiment(REPO / spec, check_files=False).with_overrides(
        {**overrides, "tracking.cache_dir": str(cache_dir / family)}
    )
    run_experiment(exp, tmp_path)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"original", "unlearned"} <= set(metrics)
    expected = family_spec(family).metrics_for(exp.method.name)
    for model, values in metrics.items():
        assert set(expected) <= set(values), model
        assert any(math.isfinite(values[name]) for name in expected), model
    rows = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(overrides["method"].get("steps", len(rows))))
    assert rows and all(math.isfinite(value) for row in rows for value in row.values())
