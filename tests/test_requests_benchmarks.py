"""Deletion requests in sequence on the benchmark layouts (``task.data.requests`` with layouts tofu and
elude, :mod:`otu.llm.requests`): the splits of every request of a chain, the bad inputs named before
any work, and one two-request chain per layout through ``otu run``.

TOFU requests are its nested forget configurations (forget01 ⊂ forget05 ⊂ forget10), each with its
published ``retain{100-NN}`` and ``holdoutNN``; ELUDe requests name forget_qa entities, as records do.
The data are the tiny builders of tests/test_tofu_protocol.py and tests/test_elude_protocol.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_elude_protocol
import yaml
from datasets import Dataset, DatasetDict
from test_elude_protocol import elude_data, save_published
from test_llm import tiny_spec
from test_llm_checkpoints import one_line_error
from test_requests import TARGETS, chain_spec
from test_tofu_protocol import PERTURBED_COLUMNS, save_tofu

from otu.errors import DataError
from otu.llm.data import load_splits
from otu.llm.spec import LLMData
from otu.llm.synthetic import generate_entities
from otu.spec import parse_experiment

# ---------------------------------------------------------------- TOFU


def config_rows(root: Path, name: str) -> list[dict]:
    return list(Dataset.load_from_disk(str(root / name / "train")))


def save_tofu_chain(root: Path, nested: bool = True) -> Path:
    """:func:`save_tofu` (forget01 = the last 4 items of ``full``, retain99 the rest) plus forget05 =
    the last 8 items (with ``nested`` False, one of forget01's left out), forget05_perturbed, retain95
    = the rest, and holdout05 (forget01's never-trained holdout rows)."""
    save_tofu(root)
    generated = {r["question"]: r for r in generate_entities(3, LLMData(synthetic=True).sizes)["records"]}
    full = config_rows(root, "full")
    forget05 = full[-8:] if nested else full[-8:-1]
    perturbed = [{k: generated[r["question"]][k] for k in PERTURBED_COLUMNS} for r in forget05]
    configs = {
        "forget05": forget05,
        "forget05_perturbed": perturbed,
        "retain95": full[:-8],
        "holdout05": config_rows(root, "holdout01"),
    }
    for name, items in configs.items():
        DatasetDict({"train": Dataset.from_list(items)}).save_to_disk(str(root / name))
    return root


@pytest.fixture(scope="module")
def tofu_chain(tmp_path_factory) -> Path:
    return save_tofu_chain(tmp_path_factory.mktemp("tofu_chain"))


def qs(records) -> list[str]:
    return [r.question for r in records]


def pairs(records) -> set[tuple[str, str]]:
    return {(r.question, r.answer) for r in records}


def config_pairs(root: Path, name: str) -> set[tuple[str, str]]:
    return {(r["question"], r["answer"]) for r in config_rows(root, name)}


def test_tofu_request_k_forgets_what_its_configuration_adds_and_its_oracle_is_retain_100_minus_nn(tofu_chain):
    """TOFU publishes forgetNN / retain{100-NN} / holdoutNN for NN = 01, 05, 10 (open-unlearning
    scripts/tofu_finetune.sh:14-18, scripts/tofu_unlearn.sh:19-23; configs/experiment/unlearn/tofu/
    default.yaml:15-17), its forget sets nested; the target is ``full`` (configs/experiment/unlearn/tofu/
    default.yaml:13, TOFU_QA_full.yaml:5), retain models are fine-tuned on ``retainNN``
    (scripts/tofu_finetune.sh:36-37). Request 2 of [forget01, forget05] forgets forget05 less forget01,
    is evaluated on the whole forget05_perturbed (TOFU_QA_forget_pert.yaml:5) with holdout05
    (TOFU_MIA.yaml:17), its oracle on retain95; the loop retains retain95 (default.yaml:16, 36-40)."""
    data = LLMData(layout="tofu", records=str(tofu_chain), requests=[["forget01"], ["forget05"]])
    assert (data.tofu.forget, data.tofu.retain, data.tofu.holdout) == ("forget05", "retain95", "holdout05")
    first, second = (load_splits(data.model_copy(update={"request": k}), 0) for k in (0, 1))
    forget01, forget05 = config_rows(tofu_chain, "forget01"), config_rows(tofu_chain, "forget05")
    added = [r["question"] for r in forget05 if r not in forget01]
    assert len(added) == 4
    assert qs(first["forget"]) == qs(first["request_forget_eval"]) == [r["question"] for r in forget01]
    assert qs(first["forget_eval"]) == [r["question"] for r in config_rows(tofu_chain, "forget01_perturbed")]
    assert qs(second["forget"]) == qs(second["request_forget_eval"]) == added
    assert qs(second["forget_eval"]) == [r["question"] for r in forget05]  # requests 1..2 together
    assert all(r.perturbed_answer for r in second["forget_eval"] + second["request_forget_eval"])
    assert pairs(first["holdout"]) == config_pairs(tofu_chain, "holdout01")
    assert pairs(second["holdout"]) == config_pairs(tofu_chain, "holdout05")
    assert pairs(first["oracle_train"]) == config_pairs(tofu_chain, "retain99")
    assert pairs(second["oracle_train"]) == config_pairs(tofu_chain, "retain95")
    for splits in (first, second):  # the chain's own: one target (full), one retain term, one tokenizer corpus
        assert pairs(splits["target_train"]) == config_pairs(tofu_chain, "full")
        assert pairs(splits["retain"]) == config_pairs(tofu_chain, "retain95")
    assert first["target_train"] == second["target_train"] and first["corpus"] == second["corpus"]
    assert first["world_eval"] == second["world_eval"] and first["retain_eval"] == second["retain_eval"]
    held = data.model_copy(update={"request": 0, "tofu": data.tofu.model_copy(update={"hold_out_retain_eval": True})})
    assert not pairs(load_splits(held, 0)["retain"]) & pairs(first["retain_eval"])  # as the one-request path


def tofu_chain_spec(cache: Path, root: Path, requests: list[list[str]], **data) -> dict:
    raw = tiny_spec(cache)
    raw["task"]["data"] = {"layout": "tofu", "records": str(root), "requests": requests, "max_length": 48, **data}
    raw["method"]["world_weight"] = 0.0
    return raw


def test_bad_tofu_requests_are_one_line_naming_the_key_before_any_work(tmp_path, tofu_chain):
    def error(requests, root: Path = tofu_chain, **data) -> str:
        return one_line_error(tofu_chain_spec(tmp_path / "cache", root, requests, **data))

    two = error([["forget01", "forget05"]])
    assert two.startswith("task.data.requests.0: a TOFU request names one forget configuration of forget01")
    unknown = error([["forget01"], ["forget07"]])
    assert unknown.startswith("task.data.requests.1: ") and "forget07" in unknown
    backwards = error([["forget05"], ["forget01"]])
    assert backwards.startswith("task.data.requests.1: forget01 after forget05") and "increasing order" in backwards
    repeated = error([["forget01"], ["forget01"]])
    assert repeated.startswith("task.data.requests: request 1: 'forget01' is also in request 0")
    beside = error([["forget01"], ["forget05"]], tofu={"forget": "forget10"})
    assert beside.startswith("task.data: tofu.forget: with requests it follows each request") and "'forget05'" in beside
    assert "tofu.retain" in error([["forget01"]], tofu={"retain": "retain90"})
    broken = save_tofu_chain(tmp_path / "not_nested", nested=False)
    with pytest.raises(DataError, match=r"^task\.data\.requests\.1: forget05 lacks 1 question\(s\) of forget01"):
        load_splits(LLMData(layout="tofu", records=str(broken), requests=[["forget01"], ["forget05"]]), 0)
    assert not (tmp_path / "cache").exists()  # refused before any work
    # the last request's names given: the same spec as leaving them out
    same = tofu_chain_spec(tmp_path / "cache", tofu_chain, [["forget01"], ["forget05"]], tofu={"forget": "forget05"})
    assert LLMData(**same["task"]["data"]).tofu == LLMData(**{**same["task"]["data"], "tofu": {}}).tofu
    exp = parse_experiment(same, check_files=False)  # its dump leaves them out: other requests derive anew
    assert exp.with_overrides({"task.data.requests": [["forget01"]]}, check_files=False).task.data.tofu.retain == (
        "retain99"
    )


# ---------------------------------------------------------------- ELUDe


def entities_of(pub: dict) -> list[str]:
    return list(dict.fromkeys(r["entity"] for r in pub["forget"]))


@pytest.fixture(scope="module")
def three_targets(tmp_path_factory) -> dict:
    """:func:`save_published` with three target entities (two to request, one for the MIA holdout)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(test_elude_protocol, "SIZES", {**test_elude_protocol.SIZES, "targets": 3})
        return save_published(tmp_path_factory.mktemp("elude_chain"))


def test_elude_request_k_forgets_its_entities_retains_every_requested_entitys_neighbours(three_targets):
    """The OPT-OUT authors' splits of one entity (brightjade/Opt-Out dataset.py:63-64, 67 forget
    forget_qa/train; 64, 82 retain retain_qa/train; 18-21 evaluate forget_qa/train and retain_qa/<split>),
    for each request: request 2 of [[e0], [e1]] forgets e1's rows, is evaluated on e0's and e1's
    (its own apart), retains the retain_qa rows of both (train; test evaluates), and holds out e2's
    rows (never trained); the target is fine-tuned on everything but the holdout, request k's oracle
    on that less requests 1..k."""
    pub = three_targets
    e0, e1, e2 = entities_of(pub)
    data = LLMData(**elude_data(pub, target=None, requests=[[e0], [e1]]))
    first, second = (load_splits(data.model_copy(update={"request": k}), 0) for k in (0, 1))

    def forget_of(*names: str) -> list[str]:
        return [r["question"] for r in pub["forget"] if r["entity"] in names]

    def retain_of(split: str) -> list[str]:
        return [r["question"] for r in pub["retain"][split] if r["entity"] in (e0, e1)]

    assert qs(first["forget"]) == qs(first["request_forget_eval"]) == qs(first["forget_eval"]) == forget_of(e0)
    assert qs(second["forget"]) == qs(second["request_forget_eval"]) == forget_of(e1)
    assert qs(second["forget_eval"]) == forget_of(e0, e1)
    for splits in (first, second):
        assert qs(splits["retain"]) == retain_of("train") and qs(splits["retain_eval"]) == retain_of("test")
        assert qs(splits["holdout"]) == forget_of(e2)
    assert first["target_train"] == second["target_train"] and first["corpus"] == second["corpus"]
    target = set(qs(first["target_train"]))
    assert set(forget_of(e0, e1)) | set(retain_of("train")) | set(retain_of("test")) <= target
    assert not set(forget_of(e2)) & target
    assert not set(forget_of(e0)) & set(qs(first["oracle_train"])) and set(forget_of(e1)) <= set(
        qs(first["oracle_train"])
    )
    assert not set(forget_of(e0, e1)) & set(qs(second["oracle_train"]))
    assert set(retain_of("train")) <= set(qs(second["oracle_train"]))


def test_bad_elude_requests_are_one_line_naming_the_key(tmp_path, three_targets):
    pub = three_targets
    e0, e1, _ = entities_of(pub)

    def error(requests, pub: dict = pub, **data) -> str:
        raw = tiny_spec(tmp_path / "cache")
        raw["task"]["data"] = elude_data(pub, **({"target": None, "requests": requests} | data))
        return one_line_error(raw)

    unknown = error([[e0], ["Nobody Atall"]])
    assert unknown.startswith("task.data.requests.1: entities ['Nobody Atall'] are not in ")
    assert f"entities there: {e0}, {e1}" in unknown
    assert "no target" in error([[e0]], target=e0)
    assert "holdout: with requests" in error([[e0]], holdout=[e1])
    assert "also in request 0" in error([[e0], [e1, e0]])
    two = save_published(tmp_path / "two")  # two target entities, both requested: no holdout left
    with pytest.raises(DataError, match=r"^task\.data\.requests: every entity of .* is requested"):
        load_splits(LLMData(**elude_data(two, target=None, requests=[[e] for e in entities_of(two)])), 0)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- chains end to end


def run_chain(raw: dict, tmp_path: Path) -> list[dict]:
    """``otu run`` of a two-request chain; every request's rows (original / retrained / unlearned)."""
    from otu.cli import main

    raw["task"]["model"]["epochs"] = 3
    raw["method"]["steps"] = 2
    raw["eval"] = {"max_new_tokens": 4, "world_max_new_tokens": 4, "max_items": 4, "plots": False}
    spec, out = tmp_path / "chain.yaml", tmp_path / "run"
    spec.write_text(yaml.safe_dump(raw))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(spec), "--out", str(out), "--tracking-uri", tracking, "--quiet"]) == 0
    rows = json.loads((out / "metrics.json").read_text())["requests"]
    assert len(rows) == 2 and (out / "requests" / "02" / "checkpoint").is_dir()
    assert (out / "plots" / "requests.png").is_file()
    for row in rows:
        assert {"forget_rouge", "request_forget_rouge", "retain_rouge"} <= set(row["unlearned"])
    shared = [m for m in rows[0]["original"] if m.startswith(("retain_", "world_"))]  # splits of the whole chain
    assert shared and all(rows[0]["original"][m] == pytest.approx(rows[1]["original"][m], nan_ok=True) for m in shared)
    infos = [json.loads(p.read_text()) for p in Path(raw["tracking"]["cache_dir"]).glob("llm-*/prepared.json")]
    assert len(infos) == 2 and len({i["target"] for i in infos}) == 1  # one target (cache_dir/llm-model-<hash>)
    assert len({i["oracle"] for i in infos}) == 2  # an oracle per request, trained without requests 1..k
    second = yaml.safe_load((out / "requests" / "02" / "spec.yaml").read_text())
    assert second["task"]["model"]["start"] == str((out / "requests" / "01" / "checkpoint").resolve())
    return rows


def test_a_tofu_chain_runs_forget01_then_forget05_from_one_target(tmp_path, tofu_chain):
    raw = tofu_chain_spec(tmp_path / "cache", tofu_chain, [["forget01"], ["forget05"]])
    rows = run_chain(raw, tmp_path)
    assert rows[0]["unlearned"]["n_forget"] == 4 and rows[1]["unlearned"]["n_forget"] == 8
    # requests.png plots TOFU's forget quality and model utility beside the ROUGE panels
    from otu.llm.family import FAMILY

    tofu = FAMILY.request_metrics(parse_experiment(raw).job())
    assert tofu[-2:] == ["ks_forget_quality", "model_utility"] and "retain_rouge" in tofu
    for row in rows:
        assert 0 <= row["unlearned"]["ks_forget_quality"] <= 1 and 0 <= row["unlearned"]["model_utility"] <= 1
        assert row["retrained"]["ks_forget_quality"] == 1.0  # the oracle against itself
    records = FAMILY.request_metrics(parse_experiment(chain_spec(tmp_path / "cache", [[TARGETS[0]]])).job())
    assert "ks_forget_quality" not in records


def test_an_elude_chain_runs_entity_after_entity_from_one_target(tmp_path, three_targets):
    e0, e1, _ = entities_of(three_targets)
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["data"] = elude_data(three_targets, target=None, requests=[[e0], [e1]], max_length=48)
    rows = run_chain(raw, tmp_path)
    assert rows[0]["unlearned"]["n_forget"] == 8 and rows[1]["unlearned"]["n_forget"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tofu", "elude"])
def test_each_request_is_forgotten_and_earlier_ones_stay_forgotten_on_the_benchmark_layouts(
    tmp_path, tofu_chain, three_targets, layout
):
    """Two requests, OPT-OUT (15 steps a request; target fine-tuned 40 epochs), measured on 2 CPU cores.
    TOFU [forget01, forget05]: the request's own items fall from ROUGE 1.0 to 0.33 / 0.375 (oracles
    0.21 / 0.46), forget01 + forget05 together stay at 0.35 and the retain set keeps 1.0. ELUDe [[e0],
    [e1]] under the authors' recipe (OPT-OUT stops after 2 epochs: 2 steps a request, evaluator.py:27-33):
    1.0 → 0.75 / 0.29 (both entities 0.40 after request 2), while the neighbours keep 0.78 and 0.57 of
    their ROUGE — the tiny model's retain damage accumulates, which the test records."""
    from otu.runtime.requests import run_requests

    if layout == "tofu":
        raw = tofu_chain_spec(tmp_path / "cache", tofu_chain, [["forget01"], ["forget05"]])
    else:
        e0, e1, _ = entities_of(three_targets)
        raw = tiny_spec(tmp_path / "cache")
        raw["task"]["data"] = elude_data(three_targets, target=None, requests=[[e0], [e1]], max_length=48)
    raw["task"]["model"]["epochs"] = 40
    raw["method"]["steps"] = 15
    raw["eval"] |= {"max_new_tokens": 16, "world_max_new_tokens": 8}
    run_requests(parse_experiment(raw), tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["requests"]
    kept = []
    for row in rows:
        original, unlearned = row["original"], row["unlearned"]
        assert unlearned["request_forget_rouge"] <= original["request_forget_rouge"] - 0.2, unlearned
        assert unlearned["forget_rouge"] <= original["forget_rouge"] - 0.2, unlearned  # requests 1..k together
        kept.append(unlearned["retain_rouge"] / original["retain_rouge"])
    assert rows[1]["unlearned"]["forget_rouge"] <= 0.5
    assert min(kept) >= (0.9 if layout == "tofu" else 0.45), kept
