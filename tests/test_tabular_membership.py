"""eval.membership on the tabular family's data-point unlearning (digits, forget_fraction of one class):
U-LiRA and the challenge score with shadows trained as Ray tasks (the family-neutral shadows of
otu.classifiers.membership, as vision's), the numbers in every model's row, the per-example Parquet and
figures, and the refusals (feature unlearning, too few shadows, too few forget images)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from otu.classifiers import challenge
from otu.errors import SpecError
from otu.registry import family_api
from otu.runtime.experiment import run_experiment
from otu.runtime.shadows import shadow_dir, train_shadows
from otu.sections import MEMBERSHIP_METRICS
from otu.spec import known_metrics, parse_experiment, parse_sweep


def experiment(membership: dict, tmp_path, epochs: int = 20, method: dict | None = None, **data) -> dict:
    """The digits data-point spec (sweeps/experiments/marginal_digits.yaml: 75 % of the training 3s
    forgotten) on a small training split (20 %), so that the classifier memorises its examples."""
    return {
        "name": "tabular-mi",
        "seed": 0,
        "task": {
            "family": "tabular",
            "data": {"source": "digits", "test_fraction": 0.8, **data},
            "model": {"epochs": epochs},
        },
        "method": method or {"name": "finetune", "epochs": 1},
        "eval": {"membership": membership},
        "tracking": {"cache_dir": str(tmp_path / "cache")},
        "compute": {"threads": 1},
    }


# ---------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("membership", "method", "needle"),
    [
        ({"attack": "ulira", "shadow_models": 8}, {"name": "barycenter"}, r"^eval\.membership: 'barycenter' unlearns"),
        ({"attack": "challenge", "shadow_models": 3}, {"name": "barycenter"}, r"^eval\.membership: "),
        ({"attack": "ulira", "shadow_models": 4}, None, r"^eval\.membership(\.shadow_models)?: .*even number ≥ 6"),
        ({"attack": "ulira", "shadow_models": 7}, None, r"even number ≥ 6"),
        ({"attack": "challenge", "shadow_models": 2}, None, r"shadow_models"),
        ({"attack": "lira"}, None, r"^eval\.membership\.attack"),
    ],
)
def test_bad_membership_specs_name_the_key(membership, method, needle, tmp_path):
    with pytest.raises(SpecError, match=needle) as err:
        parse_experiment(experiment(membership, tmp_path, method=method), check_files=False)
    assert "eval.membership" in str(err.value) and "\n" not in str(err.value)


def test_ulira_on_a_tiny_forget_set_is_refused_before_work(tmp_path):
    """2 % of the ~36 training 3s: one forget image, too few for halves that each unlearn some."""
    raw = experiment({"attack": "ulira", "shadow_models": 6}, tmp_path, forget_fraction=0.02)
    with pytest.raises(SpecError, match=r"^eval\.membership\.attack: .*at least 4"):
        parse_experiment(raw)
    assert not (tmp_path / "cache").exists()  # no model was trained


def test_feature_unlearning_without_an_attack_still_parses(tmp_path):
    raw = experiment({}, tmp_path, method={"name": "barycenter"})
    assert parse_experiment(raw, check_files=False).eval.membership.attack == "population"


def test_membership_metrics_are_sweep_objectives(tmp_path):
    exp = parse_experiment(experiment({"attack": "ulira", "shadow_models": 6}, tmp_path), check_files=False)
    assert set(MEMBERSHIP_METRICS["ulira"]) <= set(known_metrics(exp))
    sweep = {
        "name": "s",
        "experiment": experiment({"attack": "challenge", "shadow_models": 3}, tmp_path, method={"name": "marginal"}),
        "space": {"method.gamma": {"grid": [1.0, 4.0]}},
        "objectives": [{"metric": "challenge_score", "mode": "max"}, {"metric": "test_acc", "mode": "max"}],
    }
    assert parse_sweep(sweep, check_files=False).objectives[0].metric == "challenge_score"
    plain = parse_experiment(experiment({}, tmp_path), check_files=False)
    assert not set(known_metrics(plain)) & {"ulira_auc", "challenge_score"}


# ---------------------------------------------------------------- runs on digits, shadows on Ray


def test_ulira_rows_scores_and_resumable_shadows(ray_local, tmp_path):
    """6 shadows (3 complementary pairs) of a 20-epoch classifier, on Ray's 2 CPUs: every model's row
    gains U-LiRA's numbers, the per-example table and the ROC are written, and a second evaluation
    retrains only a shadow whose result is gone."""
    exp = parse_experiment(experiment({"attack": "ulira", "shadow_models": 6}, tmp_path))
    out = tmp_path / "run"
    result = run_experiment(exp, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    for row in ("original", "retrained", "unlearned"):
        assert set(MEMBERSHIP_METRICS["ulira"]) <= set(metrics[row])
        assert 0.0 <= metrics[row]["ulira_auc"] <= 1.0
    assert {"forget_acc", "retain_acc", "test_acc", "mi"} <= set(metrics["unlearned"])
    table = pq.read_table(out / "membership-ulira.parquet").to_pandas()
    forget = len(family_api("tabular").prepare(exp.job(), exp.context()).splits.forget)
    assert len(table) == forget and (table["label"] == 3).all()
    assert {"index", "mu_unlearned", "sigma_retrained", "phi_original", "score_unlearned"} <= set(table)
    assert (out / "plots" / "ulira_roc.png").is_file()

    cached = sorted(shadow_dir(exp).glob("*.npz"))
    assert len(cached) == 6
    assert len(list((tmp_path / "cache").glob("tabular-*-shadow-*"))) == 6  # shadow originals beside the entry
    cached[2].unlink()  # as if the evaluation had been killed before this shadow finished
    api = family_api("tabular")
    prepared = api.prepare(exp.job(), exp.context())
    trained: list[int] = []
    results = train_shadows(exp, api, prepared, api.shadow_plan(exp.job(), prepared, exp.seed), trained.append)
    assert len(trained) == 1 and len(results) == 6


def test_challenge_on_digits(ray_local, tmp_path):
    """N = 3 runs of marginal unlearning on the original, 3 retrained references, 3 retrained controls,
    2 at a time: the original is a point mass (every ε at the cap, F = 0)."""
    membership = {"attack": "challenge", "shadow_models": 3, "parallel": 2}
    exp = parse_experiment(experiment(membership, tmp_path, epochs=10, method={"name": "marginal", "epochs": 1}))
    out = tmp_path / "run"
    metrics = run_experiment(exp, out).metrics
    assert metrics["original"]["challenge_forget_quality"] == 0.0
    assert metrics["original"]["challenge_epsilon"] == challenge.EPSILON_CAP
    for row in ("original", "retrained", "unlearned"):
        assert set(MEMBERSHIP_METRICS["challenge"]) <= set(metrics[row])
    eps = pq.read_table(out / "membership-challenge.parquet").to_pandas()
    assert (eps["epsilon_original"] == challenge.EPSILON_CAP).all()
    assert (out / "plots" / "epsilon_histogram.png").is_file()


@pytest.mark.slow
def test_ulira_oracle_at_chance_original_above(ray_local, tmp_path):
    """16 shadows of a 60-epoch classifier with a light fine-tune (one epoch at lr 1e-4) as the method:
    the retrained oracle's forget images score like never-seen ones (AUC 0.5 ± 0.1), the original's
    above (measured: 0.44 and 0.60)."""
    method = {"name": "finetune", "epochs": 1, "lr": 1e-4}
    exp = parse_experiment(experiment({"attack": "ulira", "shadow_models": 16}, tmp_path, epochs=60, method=method))
    metrics = run_experiment(exp, tmp_path / "run").metrics
    oracle, original = metrics["retrained"]["ulira_auc"], metrics["original"]["ulira_auc"]
    assert oracle == pytest.approx(0.5, abs=0.1)
    assert original > oracle
