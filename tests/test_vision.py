"""Vision family: metrics on hand-made cases, data splits and identity requests, split columns and
normalisation, models, caching, and DLFD runs with the shipped digits spec (the paper's reading and the
authors' protocol) that forget while keeping accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from otu.cache import write_atomically
from otu.classifiers.digits import load_digits
from otu.classifiers.models import build_model
from otu.errors import DataError, SpecError
from otu.family import StepCallback
from otu.registry import family_spec
from otu.spec import load_experiment, parse_experiment
from otu.vision import family
from otu.vision import prepare as prepare_mod
from otu.vision.data import make_splits
from otu.vision.methods import dlfd
from otu.vision.metrics import (
    balanced_members,
    forgetting_score,
    mia_accuracy,
    nomus,
    topk_accuracy,
)
from otu.vision.spec import VisionData

SPEC_PATH = Path(__file__).parents[1] / "sweeps" / "experiments" / "dlfd_digits.yaml"


def experiment(data: dict | None = None, method: dict | None = None, **extra) -> dict:
    return {
        "name": "t",
        "seed": 0,
        "task": {"family": "vision", "data": data or {}, "model": {}},
        "method": method or {"name": "dlfd"},
        "eval": {},
        **extra,
    }


# ---------------------------------------------------------------- metrics


def test_mia_separates_perfectly_separable_losses():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.0, 0.1, 200)
    nonmembers = rng.uniform(1.0, 2.0, 200)
    assert mia_accuracy(members, nonmembers) == pytest.approx(1.0)
    assert mia_accuracy(members + 1e-4, nonmembers, feature="log_loss") == pytest.approx(1.0)


def test_mia_is_chance_on_identical_distributions():
    rng = np.random.default_rng(1)
    losses = rng.exponential(0.5, 4000)
    assert mia_accuracy(losses[:2000], losses[2000:], test_size=0.3) == pytest.approx(0.5, abs=0.03)


def test_forgetting_score_and_nomus_arithmetic():
    assert forgetting_score(0.7) == pytest.approx(0.2)
    assert forgetting_score(0.3) == pytest.approx(0.2)
    assert nomus(0.9, 0.1) == pytest.approx(0.5 * (0.9 + 1 - 0.2))
    assert nomus(1.0, 0.0) == 1.0 and nomus(0.0, 0.5) == 0.0


def test_topk_accuracy_and_class_balance():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2, 0, 1])
    assert topk_accuracy(logits, labels, 1) == 0.25
    assert topk_accuracy(logits, labels, 2) == 0.75
    members = np.array([0, 0, 0, 1, 2])
    nonmembers = np.array([0, 1, 1, 1, 1, 3])
    keep_m, keep_n = balanced_members(members, nonmembers, seed=0)
    assert sorted(members[keep_m]) == sorted(nonmembers[keep_n]) == [0, 1]


# ---------------------------------------------------------------- data


def test_digits_splits_are_disjoint_complete_and_seeded():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and labels.dtype == torch.int64
    a = make_splits(VisionData(forget_size=50, test_fraction=0.3), seed=3)
    parts = [set(getattr(a, p).tolist()) for p in ("forget", "retain", "test", "val")]
    assert len(parts[0]) == 50 and sum(map(len, parts)) == 1797
    assert set.union(*parts) == set(range(1797))  # sizes add up: pairwise disjoint
    assert np.bincount(a.labels[a.test].numpy()).min() >= 50  # stratified: every digit tested
    b = make_splits(VisionData(forget_size=50, test_fraction=0.3), seed=3)
    c = make_splits(VisionData(forget_size=50, test_fraction=0.3), seed=4)
    assert torch.equal(a.forget, b.forget) and torch.equal(a.test, b.test)
    assert not torch.equal(a.forget, c.forget)
    frac = make_splits(VisionData(forget_fraction=0.1, test_fraction=0.5), seed=0)
    assert len(frac.forget) == round(0.1 * (len(frac.forget) + len(frac.retain)))


def _table(n_ids: int = 6, per_id: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = n_ids * per_id
    return {
        "img": rng.integers(0, 256, (n, 3, 6, 6), dtype=np.uint8),
        "y": np.tile(["cat", "dog"], n // 2),
        "person": np.repeat([f"p{i}" for i in range(n_ids)], per_id),
    }


def _file_data(path: Path, **kw) -> dict:
    return {
        "source": "file",
        "path": str(path),
        "image_column": "img",
        "label_column": "y",
        "identity_column": "person",
        **kw,
    }


@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_identity_forget_request_on_a_file(tmp_path, fmt):
    table = _table()
    path = tmp_path / f"faces.{fmt}"
    if fmt == "npz":
        np.savez(path, **table)
    else:
        cols = {
            "img": [im.tolist() for im in table["img"]],
            "y": table["y"],
            "person": table["person"],
        }
        pq.write_table(pa.table(cols), path)
    exp = parse_experiment(experiment(_file_data(path, forget_identities=["p1", "p4"], test_fraction=0.3)))
    splits = make_splits(exp.task.data, exp.seed)
    people = table["person"]
    assert sorted(set(people[splits.forget.numpy()])) == ["p1", "p4"] and len(splits.forget) == 10
    assert not {"p1", "p4"} & set(people[np.concatenate([splits.retain, splits.test])])
    assert splits.images.shape == (30, 3, 6, 6) and float(splits.images.max()) <= 1.0
    assert torch.allclose(splits.images[0], torch.from_numpy(table["img"][0] / 255.0).float())
    assert splits.num_classes == 2 and set(splits.labels.tolist()) == {0, 1}


def test_bad_data_fails_up_front_with_precise_messages(tmp_path):
    path = tmp_path / "faces.npz"
    np.savez(path, **_table())
    cases = [
        (_file_data(tmp_path / "missing.npz", forget_identities=["p1"]), "file not found"),
        (
            _file_data(tmp_path / "faces.csv", forget_identities=["p1"]),
            "must end in .parquet or .npz",
        ),
        (_file_data(path, identity_column="who", forget_identities=["p1"]), "'who' not in"),
        (
            _file_data(path, forget_identities=["p1", "nobody"]),
            "['nobody'] not found in column 'person'",
        ),
        (
            _file_data(path, forget_identities=[f"p{i}" for i in range(6)]),
            "leaves 30 forget, 0 retain",
        ),
        ({"forget_size": 5000}, "forget_size=5000"),
    ]
    for data, message in cases:
        with pytest.raises(DataError) as err:
            parse_experiment(experiment(data))
        assert message in str(err.value) and str(err.value).startswith("task.data")
    with pytest.raises(SpecError, match="give one forget request"):
        parse_experiment(experiment({"forget_size": 10, "forget_fraction": 0.1}))
    with pytest.raises(SpecError, match="forget_identities needs source 'file'"):
        parse_experiment(experiment({"forget_identities": ["a"]}))
    with pytest.raises(SpecError, match="method.name: unknown method 'scrub'.*dlfd, finetune, neggrad, retrain"):
        parse_experiment(experiment(method={"name": "scrub"}))


def test_split_column_takes_a_published_partition_and_normalisation_applies(tmp_path):
    table = _table()
    table["part"] = np.array(["forget"] * 4 + ["retain"] * 14 + ["val"] * 6 + ["test"] * 6)
    del table["person"]  # a split column replaces the identity column
    path = tmp_path / "faces.npz"
    np.savez(path, **table)
    data = {"source": "file", "path": str(path), "image_column": "img", "label_column": "y", "split_column": "part"}
    norm = {"normalize_mean": [0.5, 0.4, 0.3], "normalize_std": [0.2, 0.25, 0.5]}
    exp = parse_experiment(experiment({**data, **norm}))
    splits = make_splits(exp.task.data, exp.seed)
    assert splits.forget.tolist() == [0, 1, 2, 3] and splits.test.tolist() == list(range(24, 30))
    assert len(splits.retain) == 14 and splits.val.tolist() == list(range(18, 24))
    want = (torch.from_numpy(table["img"][5] / 255.0).float() - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / (
        torch.tensor([0.2, 0.25, 0.5])[:, None, None]
    )
    torch.testing.assert_close(splits.images[5], want)
    with pytest.raises(SpecError, match="split_column names the forget set"):
        parse_experiment(experiment({**data, "forget_size": 3}))
    with pytest.raises(SpecError, match="give normalize_mean and normalize_std together"):
        parse_experiment(experiment({**data, "normalize_mean": [0.5]}))
    wrong = parse_experiment(experiment({**data, "normalize_mean": [0.5, 0.5], "normalize_std": [1.0, 1.0]}))
    with pytest.raises(DataError, match="normalize_mean: 2 values for images of 3 channel"):
        make_splits(wrong.task.data, 0)
    np.savez(path, **{**table, "part": np.where(table["part"] == "val", "valid", table["part"])})
    with pytest.raises(DataError, match=r"split_column: 'part' holds \['valid'\]"):
        parse_experiment(experiment(data))
    np.savez(path, **{**table, "part": np.where(table["part"] == "val", "test", table["part"])})
    with pytest.raises(DataError, match="no val rows"):
        parse_experiment(experiment(data))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_models_take_any_chw_input(arch):
    model = build_model(arch, num_classes=5, in_channels=3, image_size=16, width=8).eval()
    x = torch.rand(4, 3, 16, 16)
    feats = model.features(x)
    assert feats.ndim == 2 and model(x).shape == (4, 5)
    assert torch.allclose(model.head(feats), model(x))
    assert build_model(arch, 10)(torch.rand(2, 1, 8, 8)).shape == (2, 10)


# ---------------------------------------------------------------- prepare, cache, methods


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The shipped experiment, prepared once into a fresh cache, and the original's metrics."""
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    exp = load_experiment(SPEC_PATH, [f"tracking.cache_dir={cache}"])
    prepared = family.FAMILY.prepare(exp.job(), exp.context())
    return exp, prepared, cache, family.FAMILY.evaluate(exp.job(), prepared, prepared.original)


def test_second_prepare_loads_from_cache(digits, monkeypatch):
    exp, prepared, cache, _ = digits

    def no_training(*args, **kwargs):
        raise AssertionError("prepare retrained a cached model")

    monkeypatch.setattr(prepare_mod, "train_classifier", no_training)
    other = exp.with_overrides({"method.alpha": 0.2})  # method: same cache
    again = family.FAMILY.prepare(other.job(), other.context())
    assert again.cache_path == prepared.cache_path
    for name in ("original", "retrained"):
        a, b = getattr(prepared, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in cache.iterdir()] == [prepared.cache_path.name]
    changed = exp.with_overrides({"task.model.epochs": 3})
    assert prepare_mod.cache_key(changed.job(), changed.seed) != prepare_mod.cache_key(exp.job(), exp.seed)


def test_cache_write_keeps_a_concurrent_winner(tmp_path):
    final = tmp_path / "vision-abc"
    final.mkdir()
    (final / "original.pt").write_text("theirs")
    write_atomically(final, lambda tmp: (tmp / "original.pt").write_text("ours"))
    assert (final / "original.pt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["vision-abc"]


def test_dlfd_forgets_and_keeps_accuracy(digits, tmp_path):
    exp, prepared, _, before = digits
    steps: list[tuple[int, dict]] = []
    model = family.FAMILY.unlearn(
        exp.job(), prepared, exp.context(StepCallback(lambda s, m: steps.append((s, dict(m)))), tmp_path)
    )
    oracle = family.FAMILY.evaluate(exp.job(), prepared, prepared.retrained)
    after = family.FAMILY.evaluate(exp.job(), prepared, model)
    assert set(after) == set(family_spec("vision").metrics)
    assert before["forgetting_score"] > 0.15 > oracle["forgetting_score"]  # memorised / not seen
    assert after["test_acc"] > before["test_acc"] - 0.02
    # One seed's forgetting score (an MIA on 100 images) moves by ±0.05 between seeds and CPUs; its
    # drop is asserted on the mean over seeds 0–2 (seen: 0.035, 0.12, 0.17 → 0.11), each seed's
    # score falling
    drops = [before["forgetting_score"] - after["forgetting_score"]]
    for seed in (1, 2):
        other = exp.with_overrides({"seed": seed})
        job, ctx = other.job(), other.context(None, tmp_path / f"seed-{seed}")
        seeded = family.FAMILY.prepare(job, ctx)
        unlearned = family.FAMILY.unlearn(job, seeded, ctx)
        score = [family.FAMILY.evaluate(job, seeded, m)["forgetting_score"] for m in (seeded.original, unlearned)]
        drops.append(score[0] - score[1])
    assert min(drops) > 0 and sum(drops) / len(drops) > 0.05, drops
    assert len(steps) == 9 and {"loss_ce", "loss_ot", "lambda", "forgetting_score"} <= set(steps[0][1])
    assert steps[0][1]["lambda"] == 0.0 and steps[-1][1]["lambda"] == 1.0
    assert (tmp_path / "unlearned.pt").is_file()
    paths = family.FAMILY.plots(exp.job(), prepared, {"original": prepared.original, "unlearned": model}, tmp_path)
    assert [p.name for p in paths] == ["loss_histograms.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_dlfd_switches_to_plain_ce_below_threshold(digits, tmp_path):
    exp, prepared, _, _ = digits
    steps: list[dict] = []
    high = exp.with_overrides({"method.threshold": 1.0, "method.check_every": 100})  # FS < 1 always
    family.FAMILY.unlearn(high.job(), prepared, high.context(StepCallback(lambda s, m: steps.append(dict(m)))))
    assert all(s["perturbed"] == 0.0 and "loss_ot" not in s for s in steps)


def test_baselines(digits, tmp_path):
    exp, prepared, _, before = digits
    retrain = unlearn(exp.with_overrides({"method": {"name": "retrain"}}), prepared)
    oracle = prepared.retrained.state_dict()
    assert all(torch.equal(v, oracle[k]) for k, v in retrain.state_dict().items())
    neg = exp.with_overrides({"method": {"name": "neggrad", "lr": 0.01, "epochs": 3}})
    after = family.FAMILY.evaluate(neg.job(), prepared, unlearn(neg, prepared))
    assert after["mia_acc"] < before["mia_acc"]  # ascent on the forget loss raises it
    fine = exp.with_overrides({"method": {"name": "finetune"}})
    tuned = family.FAMILY.evaluate(fine.job(), prepared, unlearn(fine, prepared))
    assert tuned["test_acc"] > before["test_acc"] - 0.03


def unlearn(exp, prepared):
    """The unlearned model of ``exp``, steps ignored, nothing saved."""
    return family.FAMILY.unlearn(exp.job(), prepared, exp.context())


def test_dlfd_authors_protocol_forgets_keeps_accuracy_and_skips_beside_short_forget_batches(digits):
    """``protocol: authors`` (Dasol-Choi/DLFD unlearn/dlfd.py:67-146) on digits: 259 retain samples in
    batches of 32 (8 full + 3), 100 forget samples cycling as 32, 32, 32, 4 (dlfd.py:83-87); a retain
    batch beside a forget batch of another size is skipped with λ still advancing (dlfd.py:89-92):
    steps 3, 7 (the short forget batch) and 8 (the short retain batch). The first batch perturbs
    unmeasured (their score starts at 3, dlfd.py:75). The final report (otu's balanced MIA on test)
    shows forgetting at kept accuracy."""
    exp, prepared, _, before = digits
    authors = exp.with_overrides({"method.protocol": "authors"})
    steps: list[tuple[int, dict]] = []
    model = family.FAMILY.unlearn(
        authors.job(), prepared, authors.context(StepCallback(lambda s, m: steps.append((s, dict(m)))))
    )
    after = family.FAMILY.evaluate(authors.job(), prepared, model)
    assert [s for s, m in steps if m.get("skipped")] == [3, 7, 8] and len(steps) == 9
    assert steps[-1][1]["lambda"] == 1.0 and "forgetting_score" not in steps[0][1]
    assert steps[0][1]["perturbed"] == 1.0 and "forgetting_score" in steps[1][1]
    assert after["forgetting_score"] < before["forgetting_score"] - 0.05
    assert after["test_acc"] > before["test_acc"] - 0.02


def test_dlfd_authors_protocol_trains_in_train_mode_only_until_the_first_monitor(digits, monkeypatch):
    """dlfd.py never sets the mode: the fresh model is in train mode for the first processed batch
    (its M×3 perturbation passes, dlfd.py:100-103, and its update, dlfd.py:119); the monitor's
    calculate_accuracy / compute_losses call model.eval() (evaluation/accuracy.py:7,
    evaluation/mia.py:13) and nothing calls train() again. With a threshold of 1 only that unmeasured
    first batch perturbs (the score then stays below it)."""
    exp, prepared, _, _ = digits
    authors = exp.with_overrides({"method.protocol": "authors", "method.perturb_steps": 2, "method.threshold": 1.0})
    modes: list[bool] = []

    def hooked(model):
        copy = dlfd_fresh_copy(model)
        record = copy.body.register_forward_pre_hook  # the CNN's trunk: forward() and features() alike
        record(lambda m, args: modes.append(m.training) if len(args[0]) == 32 else None)
        return copy

    dlfd_fresh_copy = dlfd.fresh_copy
    monkeypatch.setattr(dlfd, "fresh_copy", hooked)
    steps: list[dict] = []
    family.FAMILY.unlearn(authors.job(), prepared, authors.context(StepCallback(lambda s, m: steps.append(dict(m)))))
    first = 2 * 3 + 1  # perturbed, forget and clean passes per step, then the update
    assert modes[:first] == [True] * first and not any(modes[first:]) and len(modes) == first + 5
    assert [m.get("perturbed") for m in steps] == [1.0, 0.0, 0.0, None, 0.0, 0.0, 0.0, None, None]
