"""Evaluation actors: a checkpoint is the model as it was when submitted, whichever form travels;
with ``dynamics.attacks`` it is attacked too."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from otu.errors import SpecError
from otu.registry import family_api
from otu.runtime.evaluation import CheckpointEvaluator, start_pool, state_arrays
from otu.runtime.experiment import prepare
from otu.spec import load_experiment

REPO = Path(__file__).resolve().parents[1]
SMALL = ["task.model.epochs=3", "task.data.forget_size=30", "eval.plots=false"]


def test_actors_score_the_model_as_submitted(ray_local, tmp_path):
    exp = load_experiment(
        REPO / "sweeps/experiments/dlfd_digits.yaml",
        [*SMALL, f"tracking.cache_dir={tmp_path}", "dynamics.every=1", "dynamics.pool_size=1"],
    )
    api = family_api(exp.task.family)
    prepared = prepare(exp)
    model = copy.deepcopy(api.reference_models(prepared)["original"])
    assert state_arrays(model) is not None  # a CPU module travels as its state after the first time
    evaluator = CheckpointEvaluator(exp, start_pool("test-snapshots", 1))

    want = {}
    for step in range(3):
        want[step] = api.evaluate(exp.job(), prepared, copy.deepcopy(model))
        evaluator.submit(step, model)
        with torch.no_grad():  # training goes on: the submitted snapshot must not see this
            for p in model.parameters():
                p.mul_(0.5)
    got = dict(evaluator.drain())

    assert sorted(got) == [0, 1, 2]
    for step in range(3):
        assert got[step] == want[step]
    assert got[2]["test_acc"] < got[0]["test_acc"]  # the snapshots differ, as the models did


def test_actors_attack_each_checkpoint_when_asked(ray_local, tmp_path):
    """``dynamics.attacks``: a checkpoint row also holds ``<metric>@<label>`` of each attack, as the
    family computes it; ``dynamics.select`` may then pick the checkpoint that forgets robustly."""
    relearn = "eval.robustness=[{attack: relearn, shots: 5, epochs: 1}]"
    exp = load_experiment(
        REPO / "sweeps/experiments/dlfd_digits.yaml",
        [*SMALL, f"tracking.cache_dir={tmp_path}", relearn, "dynamics.every=1", "dynamics.pool_size=1",
         "dynamics.attacks=true", "dynamics.select=forgetting_score@relearn", "dynamics.mode=min"],
    )  # fmt: skip
    api = family_api(exp.task.family)
    prepared = prepare(exp)
    model = api.reference_models(prepared)["original"]
    evaluator = CheckpointEvaluator(exp, start_pool("test-attacks", 1))
    evaluator.submit(0, model)
    ((step, got),) = evaluator.drain()
    attacked, _ = api.attacked(exp.job(), prepared, model, exp.seed)["relearn"]
    assert got == api.evaluate(exp.job(), prepared, model) | {f"{k}@relearn": v for k, v in attacked.items()}


def test_selecting_an_attacked_metric_needs_checkpoint_attacks(tmp_path):
    base = [*SMALL, f"tracking.cache_dir={tmp_path}", "eval.robustness=[{attack: relearn}]", "dynamics.every=2"]
    spec = REPO / "sweeps/experiments/dlfd_digits.yaml"
    with pytest.raises(SpecError, match=r"dynamics.select: .*'test_acc@relearn'.* need dynamics.attacks: true"):
        load_experiment(spec, [*base, "dynamics.select=test_acc@relearn"])
    with pytest.raises(SpecError, match=r"dynamics.select: unknown metric 'recovery_forgetting_score@relearn'"):
        load_experiment(spec, [*base, "dynamics.attacks=true", "dynamics.select=recovery_forgetting_score@relearn"])
    with pytest.raises(SpecError, match="dynamics.attacks: eval.robustness lists no attack"):
        load_experiment(spec, [*SMALL, "dynamics.attacks=true"])
