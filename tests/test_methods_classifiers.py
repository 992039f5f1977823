"""Every method of the vision, tabular and generative method tables runs end to end through
:func:`otu.runtime.experiment.run_experiment` on a tiny version of a shipped spec (seconds each)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from otu.registry import family_spec
from otu.runtime.experiment import run_experiment
from otu.spec import load_experiment

SPECS = Path(__file__).resolve().parents[1] / "sweeps" / "experiments"

VISION = ["task.model.epochs=2", "task.data.forget_size=30", "eval.mia_splits=2"]
DLFD = ["method.perturb_steps=1", "method.check_every=4", "method.monitor_samples=40"]
DIGITS = ["task.model.epochs=1"]
TABLE = ["eval.classifiers=[logistic]", "eval.frontier_points=2"]
GENERATIVE = [
    "task.model.generator.steps=60", "task.model.generator.batch_size=64", "task.model.generator.hidden=64",
    "task.model.evaluator.epochs=2", "task.model.guide.epochs=1", "eval.num_samples=300", "eval.grid_size=3",
]
GENERATOR_STEPS = "steps: 3, batch_size: 32"

CASES = [
    ("vision", "dlfd_digits.yaml", [*VISION, *DLFD]),
    ("vision", "dlfd_digits.yaml", [*VISION, "method={name: retrain}"]),
    ("vision", "dlfd_digits.yaml", [*VISION, "method={name: finetune, epochs: 1}"]),
    ("vision", "dlfd_digits.yaml", [*VISION, "method={name: neggrad, epochs: 1}"]),
    ("tabular", "barycenter_tabular.yaml", TABLE),
    ("tabular", "barycenter_digits.yaml", [*DIGITS, *TABLE, "eval.plots=false"]),  # the frontier: 15 s
    ("tabular", "marginal_digits.yaml", [*DIGITS, "method.epochs=1"]),
    ("tabular", "marginal_digits.yaml", [*DIGITS, "method={name: finetune, epochs: 1}"]),
    ("generative", "uot_digits.yaml", [*GENERATIVE, "method.steps=3", "method.batch_size=32", "method.potential_hidden=32"]),
    ("generative", "uot_digits.yaml", [*GENERATIVE, f"method={{name: forget_cost, {GENERATOR_STEPS}}}"]),
    ("generative", "uot_digits.yaml", [*GENERATIVE, f"method={{name: finetune, {GENERATOR_STEPS}}}"]),
]


def load(spec: str, overrides: list[str], cache: Path | None = None):
    sets = [] if cache is None else [f"tracking.cache_dir={cache}"]
    return load_experiment(SPECS / spec, [*overrides, *sets], check_files=cache is not None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for all cases: a family's reference models are trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(
    ("family", "spec", "overrides"), CASES, ids=[f"{f}-{load(s, o).method.name}-{s}" for f, s, o in CASES]
)
def test_method_runs_end_to_end(family: str, spec: str, overrides: list[str], cache: Path, tmp_path: Path) -> None:
    exp = load(spec, overrides, cache)
    assert exp.task.family == family
    result = run_experiment(exp, tmp_path)
    unlearned = result.metrics["unlearned"]
    assert set(family_spec(family).metrics_for(exp.method.name)) <= set(unlearned)
    assert all(math.isfinite(v) for k, v in unlearned.items() if k != "pul")  # pul: NaN if undefined
    assert (tmp_path / "metrics.json").is_file() and (bool(result.plots) or not exp.eval.plots)


def test_every_method_of_the_three_families_has_a_case() -> None:
    covered = {(family, load(spec, overrides).method.name) for family, spec, overrides in CASES}
    tables = {(f, name) for f in ("vision", "tabular", "generative") for name in family_spec(f).methods}
    assert covered == tables
