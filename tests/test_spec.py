"""Spec validation: every mistake is named (field, value, what is allowed) before work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from otu.errors import DataError, SpecError
from otu.spec import load_experiment, load_sweep, parse_experiment, parse_sweep

REPO = Path(__file__).resolve().parents[1]


def experiment(**changes) -> dict:
    raw = {
        "name": "t",
        "seed": 0,
        "task": {"family": "vision", "data": {"forget_size": 20}, "model": {"epochs": 2}},
        "method": {"name": "dlfd", "alpha": 0.01},
    }
    raw.update(changes)
    return raw


def sweep(**changes) -> dict:
    raw = {
        "name": "s",
        "experiment": experiment(),
        "space": {"method.alpha": {"loguniform": [0.001, 0.1]}},
        "objectives": [{"metric": "test_acc", "mode": "max"}],
    }
    raw.update(changes)
    return raw


def error_of(fn, *args) -> str:
    with pytest.raises(SpecError) as info:
        fn(*args)
    return str(info.value)


def test_valid_experiment_resolves_family_sections_and_defaults():
    exp = parse_experiment(experiment())
    assert exp.method.alpha == 0.01 and exp.method.perturb_steps >= 1
    assert exp.task.data.forget_size == 20
    again = parse_experiment(exp.to_dict())
    assert again == exp and again.hash == exp.hash


def test_hash_changes_with_content_not_key_order():
    a = parse_experiment(experiment())
    raw = experiment()
    raw["method"] = {"alpha": 0.01, "name": "dlfd"}
    assert parse_experiment(raw).hash == a.hash
    assert a.with_overrides({"method.alpha": 0.02}).hash != a.hash


def test_unknown_method_lists_known_ones():
    msg = error_of(parse_experiment, experiment(method={"name": "dlfx"}))
    assert "method.name" in msg and "'dlfx'" in msg
    for known in ("dlfd", "finetune", "neggrad", "retrain"):
        assert known in msg


def test_unknown_family_lists_known_ones():
    raw = experiment()
    raw["task"]["family"] = "audio"
    msg = error_of(parse_experiment, raw)
    assert "task.family" in msg and "'audio'" in msg and "vision" in msg and "llm" in msg


def test_bad_values_and_unknown_keys_are_named_together():
    raw = experiment(method={"name": "dlfd", "alpha": -1, "alhpa": 2})
    raw["task"]["model"]["arch"] = "vgg"
    msg = error_of(parse_experiment, raw)
    assert "method.alpha: Input should be greater than 0 (got -1)" in msg
    assert "method.alhpa: Extra inputs are not permitted" in msg
    assert "task.model.arch" in msg and "'cnn' or 'resnet18'" in msg


def test_generic_sections_are_checked():
    msg = error_of(parse_experiment, experiment(compute={"zero_stage": 4}, name="bad name"))
    assert "compute.zero_stage" in msg and "(got 4)" in msg
    assert "name:" in msg


def test_overrides_apply_dotted_keys_with_yaml_values(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(experiment()))
    exp = load_experiment(path, ["method.alpha=0.05", "seed=3", "method.ot_cost=sqeuclidean"])
    assert exp.method.alpha == 0.05 and exp.seed == 3 and exp.method.ot_cost == "sqeuclidean"
    assert "method.bogus" in error_of(load_experiment, path, ["method.bogus=1"])
    assert "--set" in error_of(load_experiment, path, ["method.alpha"])


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-4`` as text; specs read it as the number everyone means."""
    path = tmp_path / "s.yaml"
    raw = sweep(space={"method.alpha": {"grid": ["GRID"]}})
    path.write_text(yaml.safe_dump(raw, default_flow_style=True).replace("GRID", "1e-4, 2.5E-2"))
    s = load_sweep(path, ["experiment.method.lr=1e-3"])
    assert s.space["method.alpha"].grid == [1e-4, 0.025]
    assert s.experiment.method.lr == 1e-3 and isinstance(s.experiment.method.lr, float)


def test_missing_and_non_mapping_files(tmp_path):
    assert "not found" in error_of(load_experiment, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    assert "mapping" in error_of(load_experiment, bad)


def test_sweep_validates_space_against_the_experiment():
    s = parse_sweep(sweep())
    assert s.space["method.alpha"].kind == "loguniform"
    msg = error_of(parse_sweep, sweep(space={"method.alpha": {"uniform": [-0.1, 0.1]}}))
    assert "space.method.alpha" in msg and "-0.1" in msg
    msg = error_of(parse_sweep, sweep(space={"method.nope": {"choice": [1, 2]}}))
    assert "space.method.nope" in msg


def test_sweep_ranges_objectives_and_algorithms():
    assert "low < high" in error_of(parse_sweep, sweep(space={"method.alpha": {"uniform": [0.2, 0.1]}}))
    assert "low > 0" in error_of(parse_sweep, sweep(space={"method.alpha": {"loguniform": [0, 0.1]}}))
    assert "exactly one" in error_of(parse_sweep, sweep(space={"method.alpha": {}}))
    msg = error_of(parse_sweep, sweep(objectives=[{"metric": "accuracy", "mode": "max"}]))
    assert "objectives.0.metric" in msg and "test_acc" in msg
    msg = error_of(parse_sweep, sweep(objectives=[{"metric": "test_acc", "mode": "up"}]))
    assert "objectives.0.mode" in msg
    msg = error_of(parse_sweep, sweep(search={"algorithm": "grid"}))
    assert "search.algorithm" in msg and "grid" in msg
    only_choices = {"method.alpha": {"choice": [0.01, 0.02]}}
    msg = error_of(parse_sweep, sweep(space=only_choices, search={"algorithm": "grid"}))
    assert "search.algorithm" in msg and "grid: [...]" in msg  # choice keys alone would be sampled, not enumerated
    assert "num_samples" in error_of(parse_sweep, sweep(search={"num_samples": 0}))


GPU_SPECS = {
    "optout_llama",
    "optout_elude",
    "optout_elude_lora",
    "optout_tofu",
    "tofu_ga",
    "tofu_graddiff",
    "tofu_npo",
    "muse_news_optout",
}
DATA_SPECS = {"dlfd_authors_age", "dlfd_authors_emotion"}
"""Presets for a user's own image table: not shipped, so the file check names task.data.path."""


def test_shipped_specs_are_valid(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # this machine has no hub: fail at once
    sweeps = sorted((REPO / "sweeps").glob("*.yaml"))
    experiments = sorted((REPO / "sweeps" / "experiments").glob("*.yaml"))
    assert sweeps and experiments
    for path in sweeps:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), f"{path.name}: document the sweep in a line at its top"
    for path in [*sweeps, *experiments]:
        load = load_sweep if path in sweeps else load_experiment
        if path.stem in GPU_SPECS:  # GPU specs name a checkpoint this machine does not have
            with pytest.raises(SpecError, match="task.model.path"):
                load(path)
        elif path.stem in DATA_SPECS:
            with pytest.raises(DataError, match="task.data.path: file not found"):
                load(path)
        else:
            load(path)


def test_every_shipped_spec_passes_otu_validate_from_the_repo_root(monkeypatch, capsys):
    """A user's first command: ``otu validate`` on each shipped spec exits 0 (files that are not on this
    machine — hub ids, a user's own data under ``~`` — are listed as not checked here)."""
    from otu.cli import main

    monkeypatch.chdir(REPO)
    for path in sorted((REPO / "sweeps").rglob("*.yaml")):
        assert main(["validate", str(path.relative_to(REPO))]) == 0, (path, capsys.readouterr().err)
