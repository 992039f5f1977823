"""Per-example membership inference (eval.membership): the challenge's ε and score pinned to
google-deepmind/unlearning_evaluation (metric.py, main.py at ffae0ff), U-LiRA's fits and ROC on
synthetic confidences, spec checks, and runs on digits with shadows trained as Ray tasks (cached,
resumable)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from otu.classifiers import challenge, ulira
from otu.errors import SpecError
from otu.registry import family_api
from otu.runtime.experiment import run_experiment
from otu.runtime.shadows import shadow_dir, train_shadows
from otu.spec import known_metrics, parse_experiment, parse_sweep
from otu.vision import membership as mi
from otu.vision.spec import MEMBERSHIP_METRICS

DELTA = 1e-5


def experiment(membership: dict, tmp_path, width: int = 32, forget: int = 100, **method) -> dict:
    """The digits spec's memorising setting (sweeps/experiments/dlfd_digits.yaml: 20 % train, 60
    epochs, no weight decay) with a one-epoch fine-tune as the method."""
    return {
        "name": "mi",
        "seed": 0,
        "task": {
            "family": "vision",
            "data": {"forget_size": forget, "test_fraction": 0.7, "val_fraction": 0.1},
            "model": {"epochs": 60, "weight_decay": 0.0, "width": width},
        },
        "method": {"name": "finetune", **method},
        "eval": {"membership": membership, "mia_feature": "log_loss"},
        "tracking": {"cache_dir": str(tmp_path / "cache")},
        "compute": {"threads": 1},
    }


# ---------------------------------------------------------------- φ and the challenge's scorer


def test_logit_confidence_is_log_odds_of_the_true_class():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [30.0, -30.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    p = torch.softmax(logits.double(), dim=1)[torch.arange(3), labels].numpy()
    phi = ulira.logit_confidence(logits, labels)
    assert phi[:2] == pytest.approx(np.log(p[:2] / (1 - p[:2])))
    assert phi[1] == pytest.approx(math.log(0.5))
    assert phi[2] == pytest.approx(-60.0, abs=1e-9)  # no underflow to log(0)


@pytest.mark.parametrize(
    ("fpr", "fnr", "expected"),
    [
        (0.1, 0.2, math.log(1 - DELTA - 0.2) - math.log(0.1)),  # the larger of the two directions
        (0.3, 0.05, math.log(1 - DELTA - 0.3) - math.log(0.05)),
        (0.5, 0.5, 0.0),  # a coin flip: clipped at 0
        (0.7, 0.6, 0.0),  # worse than chance: both logs negative, clipped
        (0.0, 0.0, math.inf),  # perfect separation
        (0.0, 0.4, math.nan),  # one rate 0: too few samples, dropped
        (0.25, 0.0, math.nan),
    ],
)
def test_threshold_epsilon_on_hand_built_rates(fpr, fnr, expected):
    """metric.py:220-269: inf where fpr = fnr = 0; NaN where exactly one is 0; else
    max(log(1−δ−fpr) − log fnr, log(1−δ−fnr) − log fpr) clipped at 0."""
    rates = [np.array([1 - fnr]), np.array([fnr]), np.array([fpr]), np.array([1 - fpr])]
    got = float(challenge.threshold_epsilons(rates, DELTA)[0])
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


def test_example_epsilon_caps_separated_and_peaky_sets():
    """metric.py:184-200 (range ratio < 1 % → the cap), 300 (capped at 50)."""
    low, high = np.array([0.0, 0.5, 1.0, 1.5]), np.array([10.0, 10.5, 11.0, 11.5])
    assert challenge.example_epsilon(high, low) == challenge.EPSILON_CAP  # fpr = fnr = 0 at a threshold: inf → cap
    assert challenge.example_epsilon(np.full(4, 3.0), low) == challenge.EPSILON_CAP  # a point mass


UNLEARNED = np.array(
    [
        [2.041, -2.556, 0.418, -0.568, -0.453],
        [-0.216, -2.02, -0.232, -0.865, 3.323],
        [0.226, -0.353, -0.281, -0.668, -1.055],
        [-0.391, 0.482, -0.239, 0.958, -0.2],
        [0.024, 1.546, 0.545, -0.505, -0.183],
        [0.541, 1.935, -0.27, -0.244, 1.002],
        [-0.886, -0.292, 0.883, 0.58, 0.092],
        [0.67, -2.828, 1.021, -0.96, -1.669],
    ]
)
RETRAINED = np.array(
    [
        [1.415, 2.051, 0.333, -0.615, 1.039],
        [0.921, 3.108, 2.121, 1.291, 2.667],
        [0.692, -0.389, 1.876, 1.874, 0.678],
        [-0.174, 1.344, -2.741, 2.035, 1.737],
        [-1.458, 1.092, -0.446, 2.136, -2.051],
        [-0.372, 2.064, 2.735, -2.237, 0.253],
        [1.492, 0.086, 3.386, -0.787, 1.532],
        [-0.573, 3.109, 0.968, 0.442, -1.577],
    ]
)


def test_epsilons_and_forget_score_match_the_reference_scorer():
    """Values of the challenge's own ``compute_forget_score_from_confs`` / ``_get_epsilons``
    (metric.py:165-349) on these confidences of 8 models × 5 examples, run on CPU (its ``.cuda()``
    calls made no-ops, and its ``assert thr_eps`` on a NumPy array, metric.py:285, which raises for
    more than one kept threshold, made ``assert len(thr_eps)``): the double- and single-threshold
    families, the median rule for the positive set, ⌈log 7⌉ = 2 → four buckets."""
    eps = challenge.epsilons(UNLEARNED, RETRAINED)
    assert eps == pytest.approx([1.609422, 1.609422, 1.9458988, 1.609422, 1.7917461], abs=1e-5)
    assert challenge.forget_quality(eps, 8) == pytest.approx(0.125)


def test_forget_quality_buckets_follow_the_scorer():
    """metric.py:326-349: N = 4 → ⌈log 3⌉ = 2: buckets [0, .5) [.5, 1) [1, 1.5) [1.5, 2) worth 1, ½, ¼, ⅛;
    ε ≥ 2 scores 0; F is the mean."""
    eps = np.array([0.1, 0.7, 1.2, 1.7, 2.5])
    assert challenge.forget_quality(eps, models=4) == pytest.approx((1 + 0.5 + 0.25 + 0.125 + 0) / 5)
    assert challenge.forget_quality(np.array([0.4, 0.6]), models=3) == pytest.approx((1 + 0.5) / 2)  # ⌈log 2⌉ = 1


def test_challenge_score_is_quality_times_accuracy_ratios():
    """main.py:292-337: F · (RA_U / RA_R) · (TA_U / TA_R) over the models' mean accuracies."""
    rng = np.random.default_rng(1)
    retrained = rng.normal(0.0, 1.0, (8, 20))
    unlearned = rng.normal(0.0, 1.0, (8, 20))
    row, eps = challenge.challenge_metrics(unlearned, retrained, {"unlearned": (0.9, 0.8), "retrained": (1.0, 0.85)})
    assert row["challenge_forget_quality"] == pytest.approx(challenge.forget_quality(eps, 8))
    assert row["challenge_score"] == pytest.approx(row["challenge_forget_quality"] * 0.9 * 0.8 / 0.85)
    assert row["challenge_epsilon"] == pytest.approx(eps.mean())
    copies, _ = challenge.challenge_metrics(
        np.tile(unlearned[0], (8, 1)), retrained, {"unlearned": (1, 1), "retrained": (1, 1)}
    )
    assert copies["challenge_forget_quality"] == 0.0  # a deterministic "method": every ε at the cap


# ---------------------------------------------------------------- U-LiRA on synthetic confidences


def synthetic_shadows(rng, examples: int = 60, pairs: int = 8, gap: float = 2.0):
    """Per-example means; shadows that held an example see it ``gap`` higher."""
    base = rng.normal(0, 3, examples)
    held = np.stack([mi.half_mask(examples, j, side, 0) for j in range(pairs) for side in (0, 1)])
    phi = base + gap * held + rng.normal(0, 0.5, held.shape)
    return base, phi, held


def test_ulira_auc_is_chance_for_a_model_that_never_saw_and_high_for_one_that_kept_the_trace():
    rng = np.random.default_rng(2)
    base, phi, held = synthetic_shadows(rng)
    assert (held.sum(axis=0) == 8).all()  # complementary halves: every example in half the shadows
    fits = ulira.fit_gaussians(phi, held)
    negatives = ulira.retrained_scores(phi, held, fits)
    assert len(negatives) == 60 * 8
    never = ulira.roc_summary(ulira.likelihood_ratio(base + rng.normal(0, 0.5, 60), fits), negatives)
    kept = ulira.roc_summary(ulira.likelihood_ratio(base + 2.0 + rng.normal(0, 0.5, 60), fits), negatives)
    assert never["ulira_auc"] == pytest.approx(0.5, abs=0.1)
    assert kept["ulira_auc"] > 0.95 and kept["ulira_tpr_at_1fpr"] > 0.5
    assert set(kept) == set(MEMBERSHIP_METRICS["ulira"])


def test_tpr_at_fpr_reads_the_last_point_under_the_bound():
    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.1, 0.3, 0.6, 1.0])
    assert ulira.tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert ulira.tpr_at_fpr(fpr, tpr, 0.001) == 0.1


# ---------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("membership", "needle"),
    [
        ({"attack": "ulira", "shadow_models": 4}, "shadow_models"),
        ({"attack": "ulira", "shadow_models": 7}, "even number ≥ 6"),
        ({"attack": "challenge", "shadow_models": 2}, "shadow_models"),
        ({"attack": "lira"}, "eval.membership.attack"),
    ],
)
def test_bad_membership_specs_name_the_key(membership, needle, tmp_path):
    with pytest.raises(SpecError) as err:
        parse_experiment(experiment(membership, tmp_path), check_files=False)
    assert "eval.membership" in str(err.value) and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_membership_on_a_family_without_it_and_ulira_on_a_tiny_forget_set_are_refused(tmp_path):
    raw = {
        "name": "t",
        "task": {"family": "tabular", "data": {"source": "digits"}, "model": {}},
        "method": {"name": "barycenter"},
        "eval": {"membership": {"attack": "ulira", "shadow_models": 8}},
    }
    with pytest.raises(SpecError, match=r"^eval\.membership: "):
        parse_experiment(raw, check_files=False)
    with pytest.raises(SpecError, match=r"^eval\.membership\.attack: .*at least 4"):
        parse_experiment(experiment({"attack": "ulira", "shadow_models": 6}, tmp_path, forget=3))


def test_membership_metrics_are_sweep_objectives(tmp_path):
    exp = parse_experiment(experiment({"attack": "ulira", "shadow_models": 6}, tmp_path), check_files=False)
    assert {"ulira_auc", "ulira_tpr_at_1fpr", "ulira_tpr_at_0_1fpr"} <= set(known_metrics(exp))
    sweep = {
        "name": "s",
        "experiment": experiment({"attack": "challenge", "shadow_models": 4}, tmp_path),
        "space": {"method.lr": {"grid": [0.001, 0.01]}},
        "objectives": [{"metric": "challenge_score", "mode": "max"}, {"metric": "test_acc", "mode": "max"}],
    }
    assert parse_sweep(sweep, check_files=False).objectives[0].metric == "challenge_score"
    plain = parse_experiment(experiment({}, tmp_path), check_files=False)
    assert not set(known_metrics(plain)) & {"ulira_auc", "challenge_score"}


# ---------------------------------------------------------------- runs on digits, shadows on Ray


def test_ulira_on_digits_oracle_at_chance_original_above(ray_local, tmp_path, caplog):
    """8 shadows (4 complementary pairs) of the memorising digits CNN (width 16): the retrained
    oracle's forget images score like never-seen ones (AUC 0.5 ± 0.1), the original's above; per-image
    scores in Parquet, the ROC in plots/; a second evaluation retrains only a shadow whose result is
    gone."""
    exp = parse_experiment(experiment({"attack": "ulira", "shadow_models": 8}, tmp_path, width=16))
    out = tmp_path / "run"
    result = run_experiment(exp, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    oracle, original = metrics["retrained"]["ulira_auc"], metrics["original"]["ulira_auc"]
    assert oracle == pytest.approx(0.5, abs=0.1)
    assert original > oracle
    assert {"ulira_tpr_at_1fpr", "ulira_tpr_at_0_1fpr", "test_acc"} <= set(metrics["unlearned"])
    table = pq.read_table(out / "membership-ulira.parquet").to_pandas()
    assert len(table) == 100 and {"index", "mu_unlearned", "score_unlearned", "phi_original"} <= set(table)
    assert (out / "plots" / "ulira_roc.png").is_file()

    cached = sorted(shadow_dir(exp).glob("*.npz"))
    assert len(cached) == 8
    cached[3].unlink()  # as if the evaluation had been killed before this shadow finished
    api = family_api("vision")
    with caplog.at_level(logging.WARNING, logger="otu.cache"):
        prepared = api.prepare(exp.job(), exp.context())
    assert not caplog.records  # the cached shadow originals leave the prepared entry's digests intact
    trained: list[int] = []
    results = train_shadows(exp, api, prepared, api.shadow_plan(exp.job(), prepared, exp.seed), trained.append)
    assert len(trained) == 1 and len(results) == 8


@pytest.mark.slow
def test_ulira_on_digits_with_more_shadows(ray_local, tmp_path):
    """The spec's own width (32) and 16 shadows: the same reading with tighter fits."""
    exp = parse_experiment(experiment({"attack": "ulira", "shadow_models": 16}, tmp_path))
    metrics = run_experiment(exp, tmp_path / "run").metrics
    assert metrics["retrained"]["ulira_auc"] == pytest.approx(0.5, abs=0.1)
    assert metrics["original"]["ulira_auc"] > metrics["retrained"]["ulira_auc"] + 0.1


def test_challenge_on_digits(ray_local, tmp_path):
    """N = 3 fine-tunes of the original, 3 retrained references, 3 retrained controls (a small CNN):
    the original is a point mass (F = 0); the oracle's own retraining forgets best."""
    exp = parse_experiment(experiment({"attack": "challenge", "shadow_models": 3, "parallel": 2}, tmp_path, width=8))
    out = tmp_path / "run"
    metrics = run_experiment(exp, out).metrics
    assert metrics["original"]["challenge_forget_quality"] == 0.0
    assert metrics["original"]["challenge_epsilon"] == challenge.EPSILON_CAP
    assert metrics["retrained"]["challenge_score"] > metrics["unlearned"]["challenge_score"]
    for row in ("original", "retrained", "unlearned"):
        assert set(MEMBERSHIP_METRICS["challenge"]) <= set(metrics[row])
    eps = pq.read_table(out / "membership-challenge.parquet").to_pandas()
    assert len(eps) == 100 and (eps["epsilon_original"] == challenge.EPSILON_CAP).all()
    assert (out / "plots" / "epsilon_histogram.png").is_file()


def test_shadows_train_in_process_inside_a_ray_worker(ray_local):
    """A Tune trial holds its CPUs: its shadows train in the trial's process, not as tasks that could
    wait for CPUs its sibling trials hold; the driver sends tasks."""
    from otu.runtime.shadows import inside_ray_worker

    assert not inside_ray_worker()
    assert ray_local.get(ray_local.remote(inside_ray_worker).remote())
