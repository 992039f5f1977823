"""The tabular family: W₂-barycenter feature unlearning (closed forms, leakage, a real table,
representations) and MI-regularised data-point unlearning on digits; errors named up front."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import sqrtm
from sklearn.metrics import mutual_info_score

from otu.errors import DataError, OtuError, SpecError
from otu.family import TOTAL_STEPS, Reporter, RunContext, StepCallback
from otu.runtime.experiment import run_experiment
from otu.spec import load_sweep, parse_experiment
from otu.tabular import family
from otu.tabular.barycenter import fit_gaussian, gaussian_barycenter
from otu.tabular.mi import plugin_mi

REPO = Path(__file__).resolve().parents[1]
DIABETES = REPO / "platform/otu/tabular/data/diabetes.csv"
MEANS = np.array([[0.0, 0.0, 0.0], [3.0, -1.0, 2.0], [-2.0, 2.0, 1.0]])
SCALES = np.array([[1.0, 2.0, 0.5], [2.0, 0.5, 1.0], [0.7, 1.5, 1.5]])
WEIGHTS = np.array([0.5, 0.3, 0.2])


def record(steps: list) -> Reporter:
    return StepCallback(lambda step, metrics: steps.append((step, dict(metrics))))


def context(exp, cache: Path, reporter: Reporter | None = None) -> RunContext:
    """``exp``'s run context with ``cache`` as its cache directory."""
    return replace(exp.context(reporter, cache / "ckpt"), cache_dir=cache)


def experiment(data: dict, method: dict | None = None, **sections) -> dict:
    return {
        "name": "t",
        "seed": 0,
        "task": {"family": "tabular", "data": data, "model": sections.pop("model", {})},
        "method": {"name": "barycenter", **(method or {})},
        "eval": sections.pop("eval", {}),
        **sections,
    }


def gaussian_csv(path: Path, n: int = 1800, seed: int = 0) -> Path:
    """Three Gaussian groups (diagonal covariances SCALES², weights WEIGHTS); target = sign of a
    group-independent linear score plus noise; a categorical column that carries no signal."""
    rng = np.random.default_rng(seed)
    group = rng.choice(3, size=n, p=WEIGHTS)
    x = MEANS[group] + SCALES[group] * rng.standard_normal((n, 3))
    score = x @ np.array([1.0, -1.0, 0.5]) + rng.standard_normal(n)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["colour"] = rng.choice(["red", "green"], size=n)
    frame["group"] = np.array(["g0", "g1", "g2"])[group]
    frame["label"] = (score > np.median(score)).astype(int)
    frame.to_csv(path, index=False)
    return path


def run(exp_raw: dict, cache: Path, **overrides) -> tuple[dict, dict, list]:
    """Original and unlearned metrics of ``exp_raw`` through the family API, and the reports."""
    exp = parse_experiment(exp_raw).with_overrides(overrides)
    job = exp.job()
    prepared = family.FAMILY.prepare(job, context(exp, cache))
    steps: list = []
    unlearned = family.FAMILY.unlearn(job, prepared, context(exp, cache, record(steps)))
    original = family.FAMILY.evaluate(job, prepared, family.FAMILY.reference_models(prepared)["original"])
    return original, family.FAMILY.evaluate(job, prepared, unlearned), steps


# ---------------------------------------------------------------- barycenter: exact


def test_bures_barycenter_matches_closed_form_and_maps_push_groups_onto_it():
    covs = np.stack([np.diag(s**2) for s in SCALES])  # commuting: Σ = (Σ_k w_k Σ_k^{1/2})²
    mean, cov = gaussian_barycenter(MEANS, covs, WEIGHTS)
    np.testing.assert_allclose(mean, WEIGHTS @ MEANS, atol=1e-10)
    np.testing.assert_allclose(cov, np.diag((WEIGHTS @ SCALES) ** 2), atol=1e-6)

    rng = np.random.default_rng(1)  # general (non-commuting) covariances: the fixed point holds
    roots = [rng.standard_normal((3, 3)) for _ in range(3)]
    covs = np.stack([r @ r.T + 0.5 * np.eye(3) for r in roots])
    mean, cov = gaussian_barycenter(MEANS, covs, WEIGHTS)
    half = np.real(sqrtm(cov))
    fixed = sum(w * np.real(sqrtm(half @ c @ half)) for w, c in zip(WEIGHTS, covs, strict=True))
    np.testing.assert_allclose(fixed, cov, atol=1e-6)


def test_fitted_maps_recover_the_closed_form_from_samples():
    rng = np.random.default_rng(0)
    z = rng.choice(3, size=30_000, p=WEIGHTS)
    x = MEANS[z] + SCALES[z] * rng.standard_normal((len(z), 3))
    maps = fit_gaussian(x, z, cov_reg=0.0, max_iter=1000, tol=1e-9)
    np.testing.assert_allclose(maps.mean, WEIGHTS @ MEANS, atol=0.05)
    np.testing.assert_allclose(maps.cov, np.diag((WEIGHTS @ SCALES) ** 2), atol=0.05)
    moved = maps(x, z)
    for g in range(3):  # each group lands on the barycenter's mean and covariance
        np.testing.assert_allclose(moved[z == g].mean(axis=0), maps.mean, atol=1e-8)
        np.testing.assert_allclose(np.cov(moved[z == g], rowvar=False, bias=True), maps.cov, atol=1e-6)


def test_gaussian_groups_leak_at_t0_and_not_at_t1(tmp_path):
    raw = experiment(
        {
            "path": str(gaussian_csv(tmp_path / "g.csv")),
            "target": "label",
            "sensitive": "group",
            "columns": ["a", "b", "c"],
        },
        {"variant": "gaussian"},
        eval={"classifiers": ["logistic", "forest"], "forest_trees": 50},
    )
    original, unlearned, steps = run(raw, tmp_path)
    assert original["leakage_auc"] > 0.9  # three well-separated groups
    assert abs(unlearned["leakage_auc"] - 0.5) < 0.07
    assert unlearned["mi_estimate"] < 0.01 < original["mi_estimate"]
    assert [s for s, _ in steps] == [0] and steps[0][1]["t"] == 1.0
    assert steps[0][1]["transport_cost"] > 1.0  # the groups had to move
    kept, _, _ = run(raw, tmp_path, **{"method.t": 0.0})
    assert kept == original  # t = 0 keeps the features


def test_a_k_shot_probe_finds_the_groups_before_and_not_after_the_barycenter(tmp_path):
    """``eval.robustness`` probe: an MLP fit on 60 labelled samples recovers the group from the
    original features, and is at chance on the barycenter's (t = 1); the clean rows are unchanged."""
    from otu.runtime.experiment import run_experiment

    data = {
        "path": str(gaussian_csv(tmp_path / "g.csv")),
        "target": "label",
        "sensitive": "group",
        "columns": ["a", "b", "c"],
    }
    probes = [
        {"attack": "probe", "shots": 60},
        {"attack": "probe", "name": "lr", "shots": 60, "classifier": "logistic"},
    ]
    ev = {"classifiers": ["logistic"], "plots": False, "robustness": probes}
    raw = experiment(data, {"variant": "gaussian"}, eval=ev, tracking={"cache_dir": str(tmp_path / "cache")})
    metrics = run_experiment(parse_experiment(raw), tmp_path / "run").metrics
    assert set(metrics) == {"original", "unlearned", "original@probe", "unlearned@probe", "original@lr", "unlearned@lr"}
    assert metrics["original@probe"]["leakage_auc"] > 0.9
    assert abs(metrics["unlearned@probe"]["leakage_auc"] - 0.5) < 0.1
    assert metrics["unlearned"]["leakage_auc@lr"] == metrics["unlearned@lr"]["leakage_auc"]
    raw["eval"]["robustness"] = []
    clean = run_experiment(parse_experiment(raw), tmp_path / "clean").metrics
    assert {k: v for k, v in metrics["unlearned"].items() if "@" not in k} == clean["unlearned"]


def test_probes_that_the_task_cannot_feed_fail_before_work(tmp_path):
    data = {
        "path": str(gaussian_csv(tmp_path / "g.csv", n=300)),
        "target": "label",
        "sensitive": "group",
        "columns": ["a"],
    }
    raw = experiment(data, eval={"robustness": [{"attack": "probe", "shots": 2}]})
    assert "eval.robustness (probe).shots: 2 must be at least the 3 groups" in error_of(raw)
    raw["eval"]["robustness"] = [{"attack": "probe", "shots": 10_000}]
    assert "fewer than the" in error_of(raw)
    raw["eval"]["robustness"] = [{"attack": "relearn"}]
    assert "eval.robustness.0.attack" in error_of(raw)
    point = experiment({"source": "digits"}, {"name": "marginal"}, eval={"robustness": [{"attack": "probe"}]})
    assert "eval.robustness: the tabular probes attack feature unlearning" in error_of(point)


def test_empirical_variant_handles_a_one_hot_column(tmp_path):
    """A categorical column breaks the Gaussian assumption (group-specific affine maps move its two
    atoms to group-specific places); OT maps to a shared free support do not."""
    data = {
        "path": str(gaussian_csv(tmp_path / "g.csv")),
        "target": "label",
        "sensitive": "group",
        "categorical": ["colour"],
    }
    exp = parse_experiment(experiment(data))
    assert family.FAMILY.prepare(exp.job(), context(exp, tmp_path)).feature_names == (
        "a",
        "b",
        "c",
        "colour=green",
        "colour=red",
    )
    ev = {"classifiers": ["logistic", "forest"], "forest_trees": 50}
    _, gaussian, _ = run(experiment(data, {"variant": "gaussian"}, eval=ev), tmp_path)
    original, empirical, _ = run(experiment(data, {"variant": "empirical", "support_size": 100}, eval=ev), tmp_path)
    assert original["leakage_auc"] > 0.9 and gaussian["leakage_auc"] > 0.9
    assert abs(empirical["leakage_auc"] - 0.5) < 0.06


def test_prediction_variant_equalises_group_predictions(tmp_path):
    rng = np.random.default_rng(3)  # the target depends on the group: predictions discriminate
    z = rng.integers(0, 2, size=1500)
    x = rng.standard_normal((1500, 2)) + 1.2 * z[:, None]
    y = (x.sum(axis=1) + 0.5 * rng.standard_normal(1500) > 1.2).astype(int)
    path = tmp_path / "p.parquet"
    pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "z": z, "y": y}).to_parquet(path)
    raw = experiment(
        {"path": str(path), "target": "y", "sensitive": "z"},
        {"apply_to": "prediction"},
        eval={"classifiers": ["logistic"]},
    )
    original, unlearned, _ = run(raw, tmp_path)
    assert original["discrimination"] > 0.5
    assert unlearned["discrimination"] < 0.1
    assert abs(unlearned["leakage_auc"] - 0.5) < 0.06
    assert unlearned["utility_auc"] > 0.6


# ---------------------------------------------------------------- a real table


def test_real_table_sex_is_removed_and_utility_kept(tmp_path):
    """Diabetes (sklearn's bundled table, shipped as CSV): sensitive = sex, target = above-median
    disease progression; empirical barycenter, both adversaries."""
    raw = experiment(
        {"path": str(DIABETES), "target": "high_progression", "sensitive": "sex"},
        {"variant": "empirical", "support_size": 100},
    )
    original, unlearned, _ = run(raw, tmp_path)
    assert original["leakage_auc"] > 0.75
    assert abs(unlearned["leakage_auc"] - 0.5) < 0.08
    assert unlearned["utility_auc"] > original["utility_auc"] - 0.04
    assert unlearned["discrimination"] < original["discrimination"]


def test_run_writes_metrics_and_frontier_plot(tmp_path):
    raw = experiment(
        {"path": str(DIABETES), "target": "high_progression", "sensitive": "sex"},
        eval={"classifiers": ["logistic"], "frontier_points": 3},
        tracking={"cache_dir": str(tmp_path / "cache")},
    )
    result = run_experiment(parse_experiment(raw), tmp_path / "out")
    written = json.loads((tmp_path / "out/metrics.json").read_text())
    assert set(written) == {"original", "unlearned"}
    assert set(written["unlearned"]) == {
        "utility_auc",
        "utility_acc",
        "leakage_auc",
        "leakage_bacc",
        "discrimination",
        "mi_estimate",
    }
    assert [p.name for p in result.plots] == ["frontier.png"]
    assert result.plots[0].read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits-cache")


DIGITS_MODEL = {"epochs": 4}


def test_representations_lose_ink_and_keep_the_digit(digits_cache):
    raw = experiment(
        {"source": "digits"},
        {"variant": "empirical", "support_size": 50},
        model=DIGITS_MODEL,
        eval={"classifiers": ["logistic"]},
    )
    original, unlearned, _ = run(raw, digits_cache)
    assert original["leakage_auc"] > 0.7
    assert abs(unlearned["leakage_auc"] - 0.5) < 0.08
    assert unlearned["utility_auc"] > 0.97


def test_marginal_unlearning_forgets_and_keeps_retain(digits_cache):
    raw = experiment({"source": "digits"}, {"name": "marginal", "gamma": 4.0, "epochs": 3}, model=DIGITS_MODEL)
    exp = parse_experiment(raw)
    job = exp.job()
    prepared = family.FAMILY.prepare(job, context(exp, digits_cache))
    refs = family.FAMILY.reference_models(prepared)
    entry = next(digits_cache.glob("tabular-*"))
    names = ["original.pt", "retrained.pt"]
    assert sorted(p.name for p in entry.iterdir()) == sorted([*names, *(f"{n}.sha256" for n in names)])
    again = family.FAMILY.prepare(job, context(exp, digits_cache))  # from the cache: the same weights
    for a, b in zip(again.original.state_dict().values(), prepared.original.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    steps: list = []
    model = family.FAMILY.unlearn(job, prepared, context(exp, digits_cache, record(steps)))
    original = family.FAMILY.evaluate(job, prepared, refs["original"])
    retrained = family.FAMILY.evaluate(job, prepared, refs["retrained"])
    unlearned = family.FAMILY.evaluate(job, prepared, model)
    assert [s for s, _ in steps] == [1, 2, 3] and set(steps[0][1]) == {"ce", "mi", "loss", TOTAL_STEPS}
    assert unlearned["forget_acc"] < original["forget_acc"] - 0.2  # forgetting happened
    assert unlearned["mi"] < original["mi"]
    assert unlearned["retain_acc"] > 0.9 and unlearned["test_acc"] > 0.8  # utility kept
    assert retrained["retain_acc"] > 0.9
    assert family.FAMILY.evaluate(job, prepared, refs["original"]) == original  # not trained in place

    finetune = exp.with_overrides({"method": {"name": "finetune", "epochs": 1}})
    steps.clear()
    finetuned = family.FAMILY.unlearn(finetune.job(), prepared, context(finetune, digits_cache, record(steps)))
    assert [s for s, _ in steps] == [1] and steps[0][1]["mi"] == 0.0
    assert family.FAMILY.evaluate(finetune.job(), prepared, finetuned)["retain_acc"] > 0.9


# ---------------------------------------------------------------- the MI estimator


def test_plugin_mi_equals_mutual_information_of_hard_predictions():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 3, size=400)
    pred = np.where(rng.random(400) < 0.6, z, rng.integers(0, 4, size=400))
    probs = torch.nn.functional.one_hot(torch.as_tensor(pred), 4).double()
    mi = plugin_mi(probs, torch.as_tensor(z), eps=1e-15)
    assert float(mi) == pytest.approx(mutual_info_score(z, pred), abs=1e-9)
    flat = torch.full((400, 4), 0.25, dtype=torch.float64)
    assert abs(float(plugin_mi(flat, torch.as_tensor(z)))) < 1e-8


# ---------------------------------------------------------------- errors up front


def table(tmp_path: Path, **columns) -> str:
    path = tmp_path / "t.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


def error_of(raw: dict) -> str:
    with pytest.raises(OtuError) as info:
        parse_experiment(raw)
    return str(info.value)


def test_bad_tables_and_values_fail_before_work_with_precise_messages(tmp_path):
    ok = {"x": [1.0, 2.0, 3.0, 4.0] * 3, "s": ["a", "b"] * 6, "y": [0, 1, 1, 0] * 3}
    data = {"path": table(tmp_path, **ok), "target": "y", "sensitive": "s"}
    parse_experiment(experiment(data))

    msg = error_of(experiment({**data, "target": "outcome"}))
    assert "task.data.target" in msg and "'outcome'" in msg and "available: x, s, y" in msg
    msg = error_of(experiment({**data, "sensitive": "gender"}))
    assert "task.data.sensitive" in msg and "'gender'" in msg
    single = table(tmp_path, **{**ok, "s": ["a"] * 12})
    msg = error_of(experiment({**data, "path": single}))
    assert "task.data.sensitive" in msg and "single value 'a'" in msg and "two or more groups" in msg
    garbage = table(tmp_path, **{**ok, "x": [1.0, 2.0, "n/a?", 4.0] * 3})
    msg = error_of(experiment({**data, "path": garbage}))
    assert "column 'x' must be numeric" in msg and "row 2" in msg and "'n/a?'" in msg
    assert "x" in parse_experiment(experiment({**data, "path": garbage, "categorical": ["x"]})).task.data.categorical
    for t in (-0.1, 1.5):
        msg = error_of(experiment(data, {"t": t}))
        assert msg.startswith("method.t:") and str(t) in msg
    assert "file not found" in error_of(experiment({**data, "path": str(tmp_path / "none.csv")}))
    assert "needs target" in error_of(experiment({"path": data["path"], "sensitive": "s"}))
    msg = error_of(experiment(data, {"name": "marginal"}))
    assert "method.name" in msg and "task.data.source 'digits'" in msg
    with pytest.raises(DataError, match="missing value"):
        parse_experiment(experiment({**data, "path": table(tmp_path, **{**ok, "y": [0, 1, None, 0] * 3})}))
    with pytest.raises(SpecError, match="task.data: source 'digits' derives"):
        parse_experiment(experiment({"source": "digits", "target": "y"}))


def test_shipped_sweeps_validate(monkeypatch):
    monkeypatch.chdir(REPO)  # data paths in the shipped specs are relative to the repo root
    tab = load_sweep(REPO / "sweeps/barycenter_tabular.yaml")
    assert set(tab.space) == {"method.t", "method.variant"}
    digits = load_sweep(REPO / "sweeps/marginal_digits.yaml")
    assert digits.experiment.method.name == "marginal" and "method.gamma" in digits.space
