"""Every method of every family's table, end to end on a tiny version of a shipped spec through
:func:`otu.runtime.experiment.run_experiment` (seconds each): the run writes the family's metrics
for every evaluated model and one finite ``steps.jsonl`` row per loop step, in step order.

A case is (family, spec file, ``--set`` overrides); a method whose keys differ replaces the whole
``method`` section. All cases share one cache, so a family's data and reference models are
prepared once per task.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from otu.registry import family_spec, known_families
from otu.runtime.experiment import run_experiment
from otu.spec import Experiment, load_experiment

SPECS = Path(__file__).resolve().parents[1] / "sweeps" / "experiments"


def yaml_value(value: object) -> str:
    return json.dumps(value)  # JSON is YAML flow syntax


LLM_STEPS = 2
LLM = [
    f"task.data.sizes={yaml_value({'targets': 2, 'neighbours': 2, 'perturbed': 2, 'world': 8})}",
    "task.data.max_length=48",
    f"task.model.tiny={yaml_value({'layers': 1, 'hidden': 32, 'heads': 2, 'intermediate': 64, 'vocab': 300})}",
    "task.model.epochs=2",
    f"eval={yaml_value({'max_new_tokens': 4, 'world_max_new_tokens': 4, 'max_items': 4, 'plots': False})}",
    "compute.workers=1",
]


def llm(**method: object) -> list[str]:
    return [*LLM, f"method={yaml_value({'steps': LLM_STEPS, 'batch_size': 4, 'lr': 1e-3, **method})}"]


VISION = ["task.model.epochs=2", "task.data.forget_size=30", "eval.mia_splits=2"]
DLFD = ["method.perturb_steps=1", "method.check_every=4", "method.monitor_samples=40"]
DIGITS = ["task.model.epochs=1"]
TABLE = ["eval.classifiers=[logistic]", "eval.frontier_points=2"]
GENERATIVE = [
    "task.model.generator.steps=60",
    "task.model.generator.batch_size=64",
    "task.model.generator.hidden=64",
    "task.model.evaluator.epochs=2",
    "task.model.guide.epochs=1",
    "eval.num_samples=300",
    "eval.grid_size=3",
]
GENERATOR_STEPS = "steps: 3, batch_size: 32"

CASES: list[tuple[str, str, list[str]]] = [
    *[("llm", "optout_tiny.yaml", llm(name=name)) for name in family_spec("llm").methods],
    *[
        ("llm", "optout_tiny.yaml", llm(name="optout", regulariser=kind))
        for kind in ("euclidean", "manhattan", "cosine")
    ],
    ("vision", "dlfd_digits.yaml", [*VISION, *DLFD]),
    ("vision", "dlfd_digits.yaml", [*VISION, "method={name: retrain}"]),
    ("vision", "dlfd_digits.yaml", [*VISION, "method={name: finetune, epochs: 1}"]),
    ("vision", "dlfd_digits.yaml", [*VISION, "method={name: neggrad, epochs: 1}"]),
    ("tabular", "barycenter_tabular.yaml", TABLE),
    ("tabular", "barycenter_digits.yaml", [*DIGITS, *TABLE, "eval.plots=false"]),  # the frontier: 15 s
    ("tabular", "marginal_digits.yaml", [*DIGITS, "method.epochs=1"]),
    ("tabular", "marginal_digits.yaml", [*DIGITS, "method={name: finetune, epochs: 1}"]),
    (
        "generative",
        "uot_digits.yaml",
        [*GENERATIVE, "method.steps=3", "method.batch_size=32", "method.potential_hidden=32"],
    ),
    ("generative", "uot_digits.yaml", [*GENERATIVE, f"method={{name: forget_cost, {GENERATOR_STEPS}}}"]),
    ("generative", "uot_digits.yaml", [*GENERATIVE, f"method={{name: finetune, {GENERATOR_STEPS}}}"]),
]

MAY_BE_NAN = {"pul"}  # UOT's per-class likelihood: NaN where the original makes no sample of the class


def load(spec: str, overrides: list[str], cache: Path | None = None) -> Experiment:
    sets = [] if cache is None else [f"tracking.cache_dir={cache}"]
    return load_experiment(SPECS / spec, [*overrides, *sets], check_files=cache is not None)


def case_id(case: tuple[str, str, list[str]]) -> str:
    family, spec, overrides = case
    method = load(spec, overrides).method
    return "-".join(
        [family, method.name, *([method.regulariser] if family == "llm" and method.name == "optout" else []), spec]
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for all cases: a task's reference models are trained once."""
    return tmp_path_factory.mktemp("methods-cache")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_method_runs_end_to_end(case: tuple[str, str, list[str]], cache: Path, tmp_path: Path) -> None:
    family, spec, overrides = case
    exp = load(spec, overrides, cache)
    assert exp.task.family == family
    result = run_experiment(exp, tmp_path)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"original", "unlearned"} <= set(metrics)
    expected = family_spec(family).metrics_for(exp.method.name)
    for model, values in metrics.items():
        assert set(expected) <= set(values), model
        assert any(math.isfinite(values[name]) for name in expected), model
    if family != "llm":  # LLM world metrics are NaN where an item has no perturbed answers
        unlearned = metrics["unlearned"]
        assert all(math.isfinite(v) for k, v in unlearned.items() if k not in MAY_BE_NAN)
    assert bool(result.plots) or not getattr(exp.eval, "plots", True)
    steps_file = tmp_path / "steps.jsonl"
    rows = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps))
    assert all(math.isfinite(value) for row in rows for value in row.values())
    if family == "llm":
        assert steps == list(range(LLM_STEPS))


def test_every_method_of_every_table_has_a_case() -> None:
    covered = {(family, load(spec, overrides).method.name) for family, spec, overrides in CASES}
    tables = {(family, name) for family in known_families() for name in family_spec(family).methods}
    assert covered == tables
