"""Deletion requests in sequence (``task.data.requests``, :mod:`otu.runtime.requests`): each request
unlearns the previous request's model, its oracle is trained without requests 1..k, every request is
evaluated (``forget_*`` over requests 1..k, ``request_forget_*`` its own), and a chain killed between
requests goes on where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_llm import tiny_spec
from test_llm_checkpoints import one_line_error

from otu.llm.data import load_splits
from otu.llm.spec import LLMData, SyntheticSizes
from otu.llm.synthetic import generate_entities
from otu.spec import parse_experiment

SIZES = {"targets": 4, "neighbours": 2, "perturbed": 2, "world": 8}
TARGETS = generate_entities(0, SyntheticSizes(**SIZES))["targets"]


def chain_spec(cache: Path, requests: list[list[str]], **method) -> dict:
    raw = tiny_spec(cache, **method)
    raw["task"]["data"] |= {"sizes": SIZES, "requests": requests}
    return raw


def test_request_k_forgets_its_own_entities_and_is_scored_on_requests_one_to_k():
    data = {"synthetic": True, "sizes": SIZES, "requests": [[TARGETS[0]], [TARGETS[1], TARGETS[2]]]}
    first = load_splits(LLMData(**data, request=0), 0)
    second = load_splits(LLMData(**data, request=1), 0)
    entities = lambda records: {r.entity for r in records}  # noqa: E731
    assert entities(first["forget"]) == entities(first["request_forget_eval"]) == {TARGETS[0]}
    assert entities(second["forget"]) == {TARGETS[1], TARGETS[2]}
    assert entities(second["forget_eval"]) == set(TARGETS[:3])
    assert entities(second["holdout"]) & set(TARGETS) == {TARGETS[3]}  # never requested, never trained
    neighbours = entities(second["retain"]) | entities(second["retain_eval"])
    assert len(neighbours) == 6 and not neighbours & set(TARGETS)  # the neighbours of all requests
    assert first["target_train"] == second["target_train"] and first["corpus"] == second["corpus"]
    assert entities(first["oracle_train"]) & set(TARGETS) == {TARGETS[1], TARGETS[2]}
    assert not entities(second["oracle_train"]) & set(TARGETS)


def test_a_chain_evaluates_and_trains_every_neighbour_of_every_request_in_a_seeded_draw():
    """A records chain holds out ``eval_fraction`` of each neighbour's records (one draw over all
    neighbours together evaluated none of request 1's neighbours at seed 0, docs/usage.md)."""
    data = {"synthetic": True, "synthetic_seed": 0, "sizes": SIZES, "requests": [[t] for t in TARGETS[:3]]}
    splits = load_splits(LLMData(**data, request=2), 0)
    records = generate_entities(0, SyntheticSizes(**SIZES))["records"]
    neighbours = {r["entity"] for r in records if r["neighbour_of"] in TARGETS[:3]}
    assert len(neighbours) == 6
    for name in neighbours:
        kept = [r for r in splits["retain"] if r.entity == name]
        held = [r for r in splits["retain_eval"] if r.entity == name]
        assert kept and held and len(held) == round(0.2 * (len(kept) + len(held))), name
    assert {r.entity for r in splits["retain"] + splits["retain_eval"]} == neighbours
    assert not {r.question for r in splits["retain"]} & {r.question for r in splits["retain_eval"]}
    evaluated = lambda s: [(r.entity, r.question) for r in s["retain_eval"]]  # noqa: E731
    assert evaluated(load_splits(LLMData(**data, request=0), 0)) == evaluated(splits)  # the chain's own
    assert evaluated(load_splits(LLMData(**data, request=2), 1)) != evaluated(splits)  # another seed


def test_a_neighbour_with_one_record_is_trained_not_evaluated():
    from otu.errors import DataError
    from otu.llm.data import Record
    from otu.llm.requests import request_splits

    def entity(name: str, n: int, of: str | None = None) -> list[Record]:
        return [Record(f"Q{i} {name}?", f"a{i}", entity=name, neighbour_of=of) for i in range(n)]

    data = LLMData(synthetic=True, requests=[["T"]])
    records = [*entity("T", 4), *entity("N", 4, "T"), *entity("Solo", 1, "T"), *entity("H", 4)]
    splits = request_splits(records, [], [], data, 0, "these records")
    assert [r.entity for r in splits["retain"]].count("Solo") == 1
    assert {r.entity for r in splits["retain_eval"]} == {"N"}
    alone = [*entity("T", 4), *entity("Solo", 1, "T"), *entity("H", 4)]
    with pytest.raises(DataError, match="every neighbour in these records has a single record"):
        request_splits(alone, [], [], data, 0, "these records")


def test_bad_requests_are_one_line_naming_the_key_before_any_work(tmp_path):
    def error(requests, **data) -> str:
        raw = chain_spec(tmp_path, requests)
        raw["task"]["data"] |= data
        return one_line_error(raw)

    empty = error([[TARGETS[0]], []])
    assert empty.startswith("task.data.requests: ") and "request 1 is empty" in empty
    overlap = error([[TARGETS[0]], [TARGETS[1], TARGETS[0]]])
    assert overlap.startswith("task.data.requests: ") and "also in request 0" in overlap
    unknown = error([[TARGETS[0]], ["Nobody Atall"]])
    assert unknown.startswith("task.data.requests.1: entities ['Nobody Atall'] are not in the synthetic entity set")
    assert "give one forget set per request" in error([])
    assert "no target" in error([[TARGETS[0]]], target=TARGETS[0])
    holdout = error([[TARGETS[0]]], holdout=[TARGETS[3]])  # not silently ignored
    assert holdout.startswith("task.data.holdout: with requests the MIA holdout is every entity"), holdout
    raw = chain_spec(tmp_path, [[TARGETS[0]]], lora={"r": 4})
    assert one_line_error(raw).startswith("task.data.requests: a request chain unlearns full checkpoints")
    raw = chain_spec(tmp_path, [[TARGETS[0]], [TARGETS[1]]])
    raw["dynamics"] = {"every": 2}
    assert one_line_error(raw).startswith("dynamics.every: a chain of requests (task.data.requests) evaluates")


def test_a_chain_runs_request_after_request_and_a_killed_chain_redoes_only_the_unfinished(tmp_path):
    """``otu run`` on two requests; then request 2 is removed (a kill between requests) and ``otu run
    --resume`` runs it again from request 1's checkpoint, leaving request 1 as it was."""
    from otu.cli import main

    raw = chain_spec(tmp_path / "cache", [[TARGETS[0]], [TARGETS[1]]], steps=3)
    raw["task"]["model"]["epochs"] = 5
    raw["eval"] |= {"max_new_tokens": 8, "world_max_new_tokens": 8}
    spec, out = tmp_path / "chain.yaml", tmp_path / "run"
    spec.write_text(yaml.safe_dump(raw))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(spec), "--out", str(out), "--tracking-uri", tracking, "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["requests"]) == 2 and metrics["unlearned"] == metrics["requests"][1]["unlearned"]
    for row in metrics["requests"]:
        assert {"original", "retrained", "unlearned"} <= set(row)
        assert {"forget_rouge", "request_forget_rouge", "retain_rouge"} <= set(row["unlearned"])
    assert (out / "plots" / "requests.png").is_file()
    assert main(["report", str(out)]) == 0  # the chain's report: the last request's rows, then each request's
    page = (out / "report.html").read_text()
    assert "The unlearned model after each request" in page and "request 2" in page
    first_row, second_row = (row["original"] for row in metrics["requests"])  # one target for the chain
    assert (
        first_row["retain_rouge"] == second_row["retain_rouge"] and first_row["world_prob"] == second_row["world_prob"]
    )
    second = yaml.safe_load((out / "requests" / "02" / "spec.yaml").read_text())
    assert second["task"]["model"]["start"] == str((out / "requests" / "01" / "checkpoint").resolve())
    assert second["task"]["data"]["request"] == 1

    first = out / "requests" / "01" / "metrics.json"
    stamp = first.stat().st_mtime_ns
    (out / "metrics.json").unlink()  # killed after request 1: the chain's metrics are not written yet
    for path in sorted((out / "requests" / "02").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main(["run", "--resume", str(out), "--tracking-uri", tracking, "--quiet"]) == 0
    assert first.stat().st_mtime_ns == stamp  # the finished request is not redone
    again = json.loads((out / "metrics.json").read_text())
    assert again["requests"][0] == metrics["requests"][0]
    assert again["requests"][1]["unlearned"] == pytest.approx(metrics["requests"][1]["unlearned"], nan_ok=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    ids = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(ids, filter_string="tags.`otu.kind` = 'request'")
    assert sorted(r.data.tags["otu.request"] for r in children) == ["1", "2"]  # one child run per request
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {
        r.info.run_id for r in client.search_runs(ids, filter_string="tags.`otu.kind` = 'run'")
    }


@pytest.mark.slow
def test_three_requests_each_forgotten_earlier_ones_stay_forgotten_neighbours_measured(tmp_path):
    """Three targets of the synthetic entity set, one request each, OPT-OUT (15 steps a request).
    Measured (2 CPU cores, the neighbours' evaluation items drawn per neighbour): the request's target
    falls from ROUGE 1.0 to ≈ 0.2–0.3 after its step and the targets of requests 1..k stay ≤ 0.35; the
    neighbours of all three keep 0.92 / 0.89 / 0.69 of their ROUGE — OPT-OUT misses the 80 % mark at
    the third request on this tiny model, which the test records rather than hides. docs/usage.md
    (requests) has the table under other knobs and why: request 3's own neighbours fall to 0.42, losing
    the answers one of them shares with the forgotten target."""
    from otu.runtime.requests import run_requests

    raw = chain_spec(tmp_path / "cache", [[t] for t in TARGETS[:3]], steps=15)
    result = run_requests(parse_experiment(raw), tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["requests"]
    assert set(result.metrics) == set(rows[-1]) == {"original", "retrained", "unlearned"}
    kept = []
    for k, row in enumerate(rows):
        original, unlearned = row["original"], row["unlearned"]
        assert unlearned["request_forget_rouge"] <= original["request_forget_rouge"] - 0.6, (k, unlearned)
        assert unlearned["forget_rouge"] <= 0.35, (k, unlearned)  # requests 1..k together
        kept.append(unlearned["retain_rouge"] / original["retain_rouge"])
    assert kept[0] >= 0.8 and kept[1] >= 0.8, kept
    assert kept[2] >= 0.5, kept  # measured 0.69: below 80 % (see the docstring)


def test_requests_png_draws_each_requests_original_and_oracle_from_its_own_row(tmp_path):
    """The original's per-request metrics (request_forget_*, ks_forget_quality) are computed on each
    request's splits: its line follows the rows, not request 1's value."""
    from otu.runtime.requests import plot_requests, request_series

    rows = [
        {
            "original": {"request_forget_rouge": 1.0 - k / 10, "ks_forget_quality": 0.5},
            "retrained": {"request_forget_rouge": 0.3 + k / 10},
            "unlearned": {"request_forget_rouge": 0.1 * k, "ks_forget_quality": 0.01 * k},
        }
        for k in range(3)
    ]
    assert request_series(rows, "request_forget_rouge") == {
        "unlearned": pytest.approx([0.0, 0.1, 0.2]),
        "original": pytest.approx([1.0, 0.9, 0.8]),
        "retrained": pytest.approx([0.3, 0.4, 0.5]),
    }
    assert request_series(rows, "ks_forget_quality")["retrained"] == pytest.approx([float("nan")] * 3, nan_ok=True)
    assert "original" not in request_series([{"unlearned": {"m": 1.0}}], "m")
    assert plot_requests(rows, ["request_forget_rouge", "ks_forget_quality"], tmp_path / "r.png").is_file()


def test_muse_requests_are_sust_folds_and_an_unknown_fold_is_named():
    from otu.errors import OtuError
    from otu.llm.synthetic import generate_muse

    folds = generate_muse(0)["sust"]
    data = {"layout": "muse", "synthetic": True, "requests": [["forget_1"], ["forget_2", "forget_3"]]}
    second = load_splits(LLMData(**data, request=1), 0)
    assert [r.answer for r in second["forget"]] == [r["text"] for f in ("forget_2", "forget_3") for r in folds[f]]
    assert load_splits(LLMData(**data, request=0), 0)["oracle_train"] == second["oracle_train"]
    with pytest.raises(OtuError, match=r"^task\.data\.requests\.1: .*forget_9"):
        load_splits(LLMData(**{**data, "requests": [["forget_1"], ["forget_9"]]}), 0)


def test_a_muse_chain_unlearns_fold_after_fold_with_one_target_and_one_oracle(tmp_path):
    from otu.runtime.requests import run_requests

    raw = yaml.safe_load((Path(__file__).parents[1] / "sweeps/experiments/muse_tiny_optout.yaml").read_text())
    raw["task"]["data"]["requests"] = [["forget_1"], ["forget_2"]]
    raw["task"]["model"]["epochs"] = 3
    raw["method"]["steps"] = 2
    raw["tracking"] = {"cache_dir": str(tmp_path / "cache")}
    run_requests(parse_experiment(raw), tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["requests"]
    assert len(rows) == 2 and (tmp_path / "run" / "requests" / "02" / "checkpoint").is_dir()
    for name in ("original", "retrained"):  # the same models under every request (MUSE: one retain-only oracle)
        assert rows[0][name] == pytest.approx(rows[1][name], nan_ok=True)
    assert {"verbmem_f", "knowmem_f", "knowmem_r", "privleak"} <= set(rows[1]["unlearned"])
