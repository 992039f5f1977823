"""DLFD's ``protocol: authors`` against the authors' code (github.com/Dasol-Choi/DLFD at its stored HEAD):
the batch order and short-batch skip, the perturbation (OT on clean inputs, clamp to [0, 1]), the model
mode, their MIA, the checkpoint rule, and the two presets that point at a user's MUFAC / RAF-DB table.

Expected values are written from the reference's code (file:line in each docstring). The runs on
digits, which need a prepared original model, are in test_vision.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

from otu.classifiers.models import build_model
from otu.errors import DataError, SpecError
from otu.spec import load_experiment, parse_experiment
from otu.vision import family
from otu.vision.methods.dlfd import Selector, _features, _ot, batch_order, perturb, perturb_clean_ot
from otu.vision.metrics import MIAProbe, forgetting_score, mia_accuracy
from otu.vision.spec import DLFD

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "age": REPO / "sweeps/experiments/dlfd_authors_age.yaml",
    "emotion": REPO / "sweeps/experiments/dlfd_authors_emotion.yaml",
}


# ---------------------------------------------------------------- their MIA


MEMBERS = np.array([0.01, 0.02, 0.02, 0.05, 0.08, 0.1, 0.3, 0.02, 0.6, 0.04, 0.03, 1.2])
NONMEMBERS = np.array([0.4, 0.05, 1.5, 0.9, 0.02, 2.2, 0.7, 0.3, 0.08, 1.1, 0.5, 0.6, 3.0, 0.2, 0.9, 0.01, 1.7])


def test_authors_mia_is_their_sklearn_computation_on_unbalanced_raw_losses():
    """evaluation/mia.py:23-30 and 66-70: samples = concat(test_losses, forget_losses) as one column,
    labels 0 / 1, a bare LogisticRegression, StratifiedShuffleSplit(n_splits=10, random_state=0)
    (default test size 0.1), mean CV accuracy; forgetting score |0.5 − mean| (mia.py:70). No class
    balancing, no scaler, unequal set sizes as given."""
    samples = np.concatenate((NONMEMBERS, MEMBERS)).reshape((-1, 1))
    labels = [0] * len(NONMEMBERS) + [1] * len(MEMBERS)
    cv = StratifiedShuffleSplit(n_splits=10, random_state=0)
    theirs = cross_val_score(LogisticRegression(), samples, labels, cv=cv, scoring="accuracy").mean()
    ours = mia_accuracy(MEMBERS, NONMEMBERS, n_splits=10, test_size=0.1, seed=0, standardise=False)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert forgetting_score(ours) == pytest.approx(abs(0.5 - theirs), abs=1e-12)


def test_authors_mia_probe_keeps_every_sample_the_balanced_one_pairs_classes():
    """mia.py:48-51: the losses of every forget and unseen sample enter; otu's balanced probe keeps
    min(#forget_c, #unseen_c) of each per class."""
    forget = (torch.zeros(5, 1, 2, 2), torch.tensor([0, 0, 0, 1, 1]))
    unseen = (torch.zeros(9, 1, 2, 2), torch.tensor([0, 1, 1, 1, 1, 1, 2, 2, 2]))
    kw = {"n_splits": 2, "test_size": 0.5, "feature": "loss", "seed": 0}
    authors = MIAProbe(forget, unseen, protocol="authors", **kw)
    assert len(authors.forget[1]) == 5 and len(authors.unseen[1]) == 9 and not authors.standardise
    balanced = MIAProbe(forget, unseen, **kw)
    assert sorted(balanced.forget[1].tolist()) == sorted(balanced.unseen[1].tolist()) == [0, 1, 1]
    capped = MIAProbe(forget, unseen, protocol="authors", max_samples=4, **kw)
    assert len(capped.forget[1]) == len(capped.unseen[1]) == 4


def test_authors_mia_needs_the_raw_loss():
    """mia.py:9-21: the attack reads the cross-entropy itself."""
    raw = {"name": "t", "task": {"family": "vision", "data": {}, "model": {}}, "method": {"name": "dlfd"}}
    with pytest.raises(SpecError, match="mia_protocol 'authors' reads the raw loss"):
        parse_experiment({**raw, "eval": {"mia_protocol": "authors", "mia_feature": "log_loss"}}, check_files=False)


# ---------------------------------------------------------------- batches, perturbation, selection


def test_authors_batches_are_in_data_order_and_the_forget_cycle_keeps_its_short_batch():
    """MUFAC_loader.py:89-93 / RAF_loader.py:69-70: retain_test and forget_test loaders with
    shuffle=False; unlearn/dlfd.py:83-87 restarts the forget iterator on StopIteration, so its short last
    batch comes round each cycle (and dlfd.py:89-90 then skips the retain batch beside it)."""
    spec = DLFD(name="dlfd", protocol="authors", batch_size=3, epochs=2)
    passes, forget = batch_order(spec, 10, 7, torch.Generator().manual_seed(0))
    expected_retain = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [[b.tolist() for b in p] for p in passes] == [expected_retain, expected_retain]
    cycle = [b.tolist() for b in itertools.islice(forget, 7)]
    assert cycle == [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]
    paired = zip(itertools.chain.from_iterable(passes), cycle, strict=False)
    skipped = [k for k, (r, f) in enumerate(paired) if len(r) != len(f)]
    assert skipped == [2, 3, 5]
    paper, forget = batch_order(DLFD(name="dlfd", batch_size=3), 10, 7, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(paper[0]).tolist()) == list(range(10)) and torch.cat(paper[0]).tolist() != list(range(10))
    assert {len(next(forget)) for _ in range(9)} == {3}  # the paper's cycle: full batches only


def _model_and_batches():
    gen = torch.Generator().manual_seed(0)
    model = build_model("cnn", num_classes=3, in_channels=1, image_size=8, width=4)
    x = torch.randn(6, 1, 8, 8, generator=gen) * 1.5  # like normalised pixels: about [-3, 3]
    xf = torch.randn(6, 1, 8, 8, generator=gen) * 1.5 + 0.5
    return model, x, torch.tensor([0, 1, 2, 0, 1, 2]), xf


def test_authors_perturbation_ignores_the_ot_term_and_clamps_to_the_unit_interval():
    """unlearn/dlfd.py:95-117: noise from 0; perturbed = clamp(x + noise, 0, 1); the OT loss is taken
    between the *clean* retain outputs and the forget outputs (dlfd.py:102-106), so at retain weight 0
    the noise gradient is zero and the trained input is clamp(x, 0, 1) — every negative (below-mean,
    after normalisation) pixel cut to 0. The paper's reading moves x* by the OT gradient instead."""
    model, x, y, xf = _model_and_batches()
    model.eval()
    spec = DLFD(name="dlfd", protocol="authors", alpha=0.1, perturb_steps=3, ot_weight=100.0)
    out, ot_value = perturb_clean_ot(model, x, y, xf, 0.0, spec, (0.0, 1.0))
    assert torch.equal(out, x.clamp(0, 1)) and (x < 0).any()
    with torch.no_grad():
        clean_ot = _ot(_features(model, x, "logits")[0], _features(model, xf, "logits")[0], spec)
    assert ot_value == pytest.approx(clean_ot.item(), rel=1e-6)
    moved, _ = perturb_clean_ot(model, x, y, xf, 1.0, spec, (0.0, 1.0))  # −CE ascent: noise k·α, then clamp
    assert not torch.equal(moved, x.clamp(0, 1)) and moved.min() >= 0 and moved.max() <= 1
    paper, _ = perturb(model, x, y, xf, 0.0, DLFD(name="dlfd", alpha=0.1, perturb_steps=3), (-3.0, 3.0))
    assert not torch.equal(paper, x.clamp(-3, 3))  # the OT term on x* moves it


def test_authors_perturbation_leaves_the_mode_the_papers_sets_eval():
    """dlfd.py:97-103 never sets the mode (the first batch runs in the train mode of a fresh model);
    the paper's reading perturbs in eval mode."""
    model, x, y, xf = _model_and_batches()
    model.train()
    running = model.body[0][1].running_mean.clone()  # the first BatchNorm
    perturb_clean_ot(model, x, y, xf, 0.5, DLFD(name="dlfd", protocol="authors", perturb_steps=2), (0.0, 1.0))
    assert model.training and not torch.equal(model.body[0][1].running_mean, running)
    perturb(model, x, y, xf, 0.5, DLFD(name="dlfd", perturb_steps=2), (-3.0, 3.0))
    assert not model.training


def test_selection_defaults_to_best_val_under_the_authors_protocol():
    """dlfd.py:142-145: a checkpoint is saved when FS ≤ max_forgetting_score and the validation
    accuracy beats the best so far; the paper's reading returns the last model unless told."""
    val = (torch.eye(2), torch.tensor([0, 1]))
    assert Selector(DLFD(name="dlfd", protocol="authors"), val).active
    assert not Selector(DLFD(name="dlfd"), val).active
    assert not Selector(DLFD(name="dlfd", protocol="authors", select="last"), val).active
    bound = Selector(DLFD(name="dlfd", protocol="authors", threshold=0.15, select_max_fs=0.09), val)
    assert bound.max_fs == 0.09


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_parse_and_name_the_missing_table(preset):
    """The presets carry the notebooks' DLFD settings (age_cls_experiments.ipynb / emotion_cls_experiments
    .ipynb, DLFD cell: lr, forget_weight, retain weights, perturbation steps and strength, forget
    threshold, max forgetting score; batch size of their get_data_loaders call)."""
    exp = load_experiment(PRESETS[preset], check_files=False)
    method, data = exp.method, exp.task.data
    assert method.protocol == "authors" and exp.eval.mia_protocol == "authors" and data.split_column == "split"
    settings = (
        method.lr,
        method.ot_weight,
        method.lambda_start,
        method.lambda_end,
        method.perturb_steps,
        method.alpha,
        method.threshold,
        method.select_max_fs,
        method.batch_size,
    )
    assert (
        settings
        == {
            "age": (0.008, 3.0, 0.0, 1.0, 15, 0.4, 0.15, 0.09, 32),
            "emotion": (0.006, 7.0, 0.5, 1.0, 20, 2.0, 0.23, 0.23, 64),
        }[preset]
    )
    with pytest.raises(DataError, match="task.data.path: file not found"):
        load_experiment(PRESETS[preset])


def test_age_preset_runs_on_a_table_in_its_format(tmp_path):
    """A tiny table with the preset's columns (uint8 RGB image, age-class letters, a split column)
    goes through prepare, DLFD's authors protocol and the authors' evaluation."""
    rng = np.random.default_rng(0)
    parts = ["forget"] * 12 + ["retain"] * 30 + ["val"] * 12 + ["test"] * 12
    labels = list("abc") * 22
    images = rng.integers(0, 256, (len(parts), 3, 8, 8), dtype=np.uint8)
    table = pa.table({"image": [im.tolist() for im in images], "label": labels, "split": parts})
    pq.write_table(table, tmp_path / "mufac.parquet")
    overrides = [
        f"task.data.path={tmp_path / 'mufac.parquet'}",
        f"tracking.cache_dir={tmp_path / 'cache'}",
        "task.model.arch=cnn",
        "task.model.width=4",
        "task.model.epochs=1",
        "method.batch_size=8",
        "method.perturb_steps=2",
        "eval.mia_splits=2",
        "eval.plots=false",
    ]
    exp = load_experiment(PRESETS["age"], overrides)
    prepared = family.FAMILY.prepare(exp.job(), exp.context())
    splits = prepared.splits
    assert [len(getattr(splits, p)) for p in ("forget", "retain", "val", "test")] == [12, 30, 12, 12]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(splits.images[0], (torch.from_numpy(images[0]) / 255.0 - mean) / std)
    model = family.FAMILY.unlearn(exp.job(), prepared, exp.context())
    metrics = family.FAMILY.evaluate(exp.job(), prepared, model)
    assert set(metrics) == {"test_acc", "top2_acc", "mia_acc", "forgetting_score", "nomus"}
