"""Evaluation actors: a checkpoint is the model as it was when submitted, whichever form travels."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

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
