"""A request chain on published checkpoints (``task.model.epochs: 0``): ``task.model.retain_paths``
gives request k its own retain-only oracle, as TOFU publishes retain99 / retain95 / retain90 for
forget01 / 05 / 10 and open-unlearning scores each forget split against its own retain model
(scripts/tofu_unlearn.sh:19-22 and 59: ``retain_logs_path`` of ``tofu_${model}_${retain_split}``);
bad inputs are one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_llm_checkpoints import TINY, one_line_error, path_spec
from test_requests import SIZES, TARGETS

from otu.llm.data import load_splits
from otu.llm.family import FAMILY
from otu.llm.models import build_tiny_model, corpus, train_tokenizer
from otu.llm.spec import LLMData, TinyModel
from otu.spec import parse_experiment

REQUESTS = [[TARGETS[0]], [TARGETS[1]]]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, str]:
    """Three tiny Llama checkpoints with one tokenizer (trained on the chain's corpus): the target and
    two different retain-only oracles (other seeds), saved as a publisher would."""
    root = tmp_path_factory.mktemp("published")
    data = LLMData(synthetic=True, sizes=SIZES, requests=REQUESTS)
    tokenizer = train_tokenizer(corpus(load_splits(data, 0)["corpus"], data.prompt), 400)
    paths = {}
    for seed, name in enumerate(("target", "retain99", "retain95")):
        model = build_tiny_model(TinyModel(**TINY), tokenizer, 48, seed=seed)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def chain(tmp_path: Path, published: dict[str, str], requests=REQUESTS, **model) -> dict:
    raw = path_spec(tmp_path, published["target"], **model)
    raw["task"]["data"] |= {"sizes": SIZES, "requests": requests}
    raw["method"]["steps"] = 1
    raw["eval"] |= {"max_new_tokens": 4, "world_max_new_tokens": 4, "max_items": 4}
    return raw


def test_request_k_is_scored_against_retain_paths_k(tmp_path, published):
    """Each request's retrained row is the evaluation of its own published oracle on its own splits."""
    from otu.runtime.requests import run_requests

    oracles = [published["retain99"], published["retain95"]]
    raw = chain(tmp_path, published, retain_paths=oracles)
    run_requests(parse_experiment(raw), tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["requests"]
    shared = ("retain_prob", "world_prob")  # the splits of the whole chain: only the checkpoint differs
    assert all(rows[0]["original"][m] == rows[1]["original"][m] for m in shared)
    assert all(rows[0]["retrained"][m] != pytest.approx(rows[1]["retrained"][m]) for m in shared)
    for k, oracle in enumerate(oracles):
        exp = parse_experiment(raw).with_overrides({"task.data.request": k})
        prepared = FAMILY.prepare(exp.job(), exp.context())
        assert prepared.oracle_path == Path(oracle)
        alone = FAMILY.evaluate(exp.job(), prepared, prepared.load(Path(oracle)))
        for metric in ("request_forget_prob", "forget_prob", *shared, "ks_forget_quality"):
            assert rows[k]["retrained"][metric] == pytest.approx(alone[metric]), (k, metric)


def test_bad_retain_paths_are_one_line_naming_the_key(tmp_path, published):
    oracle = published["retain99"]
    short = one_line_error(chain(tmp_path, published, retain_paths=[oracle]))
    assert short.startswith("task.model.retain_paths: 1 checkpoint(s) for 2 request(s)"), short
    both = one_line_error(chain(tmp_path, published, retain_paths=[oracle, oracle], retain_path=oracle))
    assert "retain_paths: give retain_path" in both and both.startswith("task.model"), both
    alone = path_spec(tmp_path, published["target"], retain_paths=[oracle])
    assert one_line_error(alone).startswith("task.model.retain_paths: 1 checkpoint(s) for no task.data.requests")
    missing = one_line_error(chain(tmp_path, published, retain_paths=[oracle, str(tmp_path / "absent")]))
    assert missing.startswith("task.model.retain_paths.1"), missing
    assert not (tmp_path / "cache").exists()  # before any work


def test_relative_retain_paths_resolve_against_the_run_directory_as_retain_path_does(tmp_path):
    """Trials, Ray Train workers and DeepSpeed ranks run elsewhere: every entry of the list is made
    absolute in the driver (a hub id stays one)."""
    from otu.llm.spec import LLMModel
    from otu.paths import path_fields, resolve_paths

    (tmp_path / "retain99").mkdir()
    model = LLMModel(path="org/target", retain_paths=["retain99", "org/retain95", "./absent"])
    assert resolve_paths(model, tmp_path).retain_paths == [
        str(tmp_path / "retain99"),
        "org/retain95",
        str(tmp_path / "absent"),
    ]
    assert path_fields(model)["retain_paths.1"] == "org/retain95"
