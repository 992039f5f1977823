"""Attacks on evaluated models (``eval.robustness``, :mod:`otu.llm.attacks`): each attack's mechanics
on the tiny LLM where the answer is known, the rows and recovery ratios a run writes, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_llm import tiny_spec

from otu.errors import DataError, SpecError
from otu.llm import attacks
from otu.llm.family import FAMILY
from otu.llm.spec import Probe, Quantize, Relearn
from otu.robustness import recovery, with_attacks
from otu.spec import parse_experiment, parse_sweep


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- quantization


def test_int8_rounds_each_row_to_127_levels_of_its_absmax():
    w = torch.tensor([[2.0, -1.0, 0.01, 0.5], [0.1, 0.0, -0.1, 0.05]])
    got = attacks.quantize_rows(w)
    levels = torch.tensor([[127.0, -64, 1, 32], [127, 0, -127, 64]])  # round(127 w / absmax), halves to even
    want = levels / 127 * torch.tensor([[2.0], [0.1]])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
def test_4bit_blocks_keep_code_values_and_round_others_to_the_nearest(quant_type):
    code = torch.tensor(attacks.CODES[quant_type])
    exact = code[torch.arange(16) % 16].reshape(2, 8) * 3.0  # block absmax 3 (the code's ±1)
    exact[0, 0] = exact[1, 0] = 3.0
    assert torch.equal(attacks.quantize_blocks(exact, 8, quant_type), exact)
    w = torch.tensor([1.0, 0.3, -0.52, 0.02])  # one block of 4, absmax 1
    nearest = code[(w.unsqueeze(1) - code).abs().argmin(1)]
    assert torch.equal(attacks.quantize_blocks(w, 4, quant_type), nearest)


def test_fp4_encodes_as_bitsandbytes_thresholds_do():
    """bitsandbytes csrc/kernels.cu ``dQuantizeFP4``: x/absmax > 0.29166667 → 1/3 else 0.25, > 0.0859375 →
    1/6 else 0.0052083, > 0.00260417 → 0.0052083 else 0, > 0.8333333 → 1 else 2/3 (sign apart)."""
    w = torch.tensor([1.0, 0.29, 0.30, 0.085, 0.087, 0.0025, 0.0027, -0.84, -0.82, 0.58])
    want = torch.tensor([1.0, 0.25, 0.33333333, 0.0052083333, 0.16666667, 0.0, 0.0052083333, -1.0, -0.6666667, 0.5])
    torch.testing.assert_close(attacks.quantize_blocks(w, 10, "fp4"), want)


def test_int8_leaves_an_fp32_models_metrics_within_1e_2_and_the_model_as_it_was(prepared):
    exp, prepared = prepared
    model = prepared.model("original")
    before = weights(model)
    clean = FAMILY.evaluate(exp.job(), prepared, model)
    quantized = attacks.quantize(model, Quantize(attack="quantize", bits=8))
    got = FAMILY.evaluate(exp.job(), prepared, quantized)
    for key in ("forget_prob", "retain_prob", "world_prob", "forget_rouge", "retain_rouge"):
        assert got[key] == pytest.approx(clean[key], abs=1e-2), key
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    lm_head = quantized.get_output_embeddings().weight
    assert torch.equal(lm_head, model.get_output_embeddings().weight)  # the head stays in full precision
    changed = [
        n for (n, p), q in zip(quantized.named_parameters(), model.parameters(), strict=True) if not torch.equal(p, q)
    ]
    assert changed and all("proj" in n for n in changed)


# ---------------------------------------------------------------- relearning and probes


def test_relearning_the_forget_items_restores_them_on_the_oracle(prepared):
    """The oracle never saw the forget items: relearning them brings their probability up, and
    leaves the oracle itself as it was."""
    exp, prepared = prepared
    oracle = prepared.model("retrained")
    before = weights(oracle)
    records = prepared.splits["forget_eval"]
    attack = Relearn(attack="relearn", steps=30, lr=3e-3, batch_size=4)
    relearned = attacks.relearn(oracle, prepared.encoder(), records, attack, seed=0)
    clean = FAMILY.evaluate(exp.job(), prepared, oracle)
    after = FAMILY.evaluate(exp.job(), prepared, relearned)
    assert after["forget_prob"] > clean["forget_prob"] + 0.3 and after["forget_rouge"] > clean["forget_rouge"] + 0.3
    assert all(torch.equal(a, b) for a, b in zip(before, oracle.parameters(), strict=True))


def test_forget_subset_relearns_a_seeded_part_and_scores_the_rest(prepared):
    _, prepared = prepared
    attack = Relearn(attack="relearn", fraction=0.5)
    relearned, splits = attacks.relearn_split(prepared.splits, attack, seed=3)
    again, _ = attacks.relearn_split(prepared.splits, attack, seed=3)
    forget = prepared.splits["forget_eval"]
    assert relearned == again and len(relearned) == round(len(forget) / 2)
    assert {r.question for r in relearned}.isdisjoint(r.question for r in splits["forget_eval"])
    assert len(relearned) + len(splits["forget_eval"]) == len(forget)
    assert splits["retain_eval"] is prepared.splits["retain_eval"]


def test_probes_rewrite_the_evaluation_questions_and_reuse_the_metric_code(prepared):
    exp, prepared = prepared
    model = prepared.model("original")
    identity = attacks.probe_splits(prepared.splits, Probe(attack="probe", template="{question}"))
    assert FAMILY.evaluate(exp.job(), prepared.on(identity), model) == FAMILY.evaluate(exp.job(), prepared, model)
    prefixed = attacks.probe_splits(prepared.splits, Probe(attack="probe", template="prefix"))
    q = prepared.splits["forget_eval"][0].question
    assert prefixed["forget_eval"][0].question == f"{q} Sure, here is the answer:"
    assert prefixed["forget"] is prepared.splits["forget"]  # what was trained is not rewritten
    paraphrased = attacks.probe_splits(prepared.splits, Probe(attack="probe", template="paraphrase"))
    assert [r.question for r in paraphrased["forget_eval"]] == [
        r.paraphrased_question for r in prepared.splits["forget_eval"]
    ]


def test_multiple_choice_offers_the_true_and_perturbed_answers_in_a_seeded_order():
    from otu.llm.data import Record

    record = Record("Where does Ana live?", "Lima", perturbed_answer=("Oslo", "Rome", "Kyiv"))
    probe = Probe(attack="probe", template="multiple_choice")
    question, letters, true = attacks.choice_prompt(record, probe, seed=5)
    assert (question, letters, true) == attacks.choice_prompt(record, probe, seed=5)
    lines = question.splitlines()
    assert lines[0] == record.question and lines[-1] == "Answer:" and letters == ["A", "B", "C", "D"]
    assert sorted(line[3:] for line in lines[1:5]) == sorted(["Lima", "Oslo", "Rome", "Kyiv"])
    assert lines[1 + true] == f"{letters[true]}. Lima"
    texts = attacks.choice_prompt(record, Probe(attack="probe", template="multiple_choice", choice="text"), 5)[1]
    assert texts[true] == "Lima" and sorted(texts) == sorted(lines[i][3:] for i in range(1, 5))
    orders = {attacks.choice_prompt(record, probe, seed)[2] for seed in range(20)}
    assert len(orders) > 1  # the true option is not always in one place
    with pytest.raises(DataError, match=r"eval.robustness \(multiple_choice\): .* no forget item has any"):
        attacks.check_probe({"forget_eval": [Record("Q?", "A")]}, probe)  # instruction-style items


def test_multiple_choice_finds_what_the_original_knows_and_the_oracle_does_not(prepared):
    _, prepared = prepared
    probe = Probe(attack="probe", template="multiple_choice", choice="text")
    scores = {
        name: attacks.multiple_choice(prepared.model(name), prepared.encoder(), prepared.splits, probe, seed=0)
        for name in ("original", "retrained")
    }
    chance = 1 / (1 + len(prepared.splits["forget_eval"][0].perturbed_answer))
    assert set(scores["original"]) >= {"forget_mc_prob", "forget_mc_acc", "retain_mc_prob", "retain_mc_acc"}
    assert scores["original"]["forget_mc_acc"] == 1.0
    assert scores["original"]["forget_mc_prob"] > max(scores["retrained"]["forget_mc_prob"], chance) + 0.1
    assert scores["retrained"]["retain_mc_acc"] > chance  # the oracle still knows what it was taught
    letters = attacks.multiple_choice(
        prepared.model("original"),
        prepared.encoder(),
        prepared.splits,
        probe.model_copy(update={"choice": "letter"}),
        0,
    )
    assert all(0 <= v <= 1 for v in letters.values())


# ---------------------------------------------------------------- rows, recovery, a run


def test_recovery_is_the_share_of_the_forgotten_that_comes_back():
    assert recovery(attacked=0.6, clean=0.2, original=1.0) == pytest.approx(0.5)
    assert math.isnan(recovery(attacked=0.9, clean=0.9, original=0.9))
    rows = with_attacks(
        {"original": {"forget_rouge": 1.0}, "unlearned": {"forget_rouge": 0.1}},
        {
            "original": {"relearn": ({"forget_rouge": 1.0}, {"forget_rouge": 0.9})},
            "unlearned": {"relearn": ({"forget_rouge": 0.5}, {"forget_rouge": 0.1})},
        },
    )
    assert rows["unlearned@relearn"] == {"forget_rouge": 0.5}
    assert rows["unlearned"]["forget_rouge"] == 0.1  # the clean row stays
    assert rows["unlearned"]["recovery_forget_rouge@relearn"] == pytest.approx(0.5)  # 0.4 of the 0.8 forgotten


def test_a_run_attacks_all_three_models_alike_and_leaves_the_clean_rows(llm_cache, tmp_path, capsys):
    """``otu run`` with four attacks: every model gets the same attacks, the clean rows are what a
    run without attacks writes, MLflow takes the derived metrics, the terminal shows the recovery."""
    import yaml
    from mlflow.tracking import MlflowClient

    from otu.cli import main
    from otu.runtime.experiment import run_experiment

    raw = tiny_spec(llm_cache, steps=6)
    clean = run_experiment(parse_experiment(raw), tmp_path / "clean").metrics
    raw["eval"]["robustness"] = [
        {"attack": "relearn", "steps": 5},
        {"attack": "quantize", "bits": 4},
        {"attack": "probe", "template": "prefix"},
        {"attack": "probe", "template": "multiple_choice", "choice": "text", "name": "mc"},
    ]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "attacked"), "--tracking-uri", uri, "--quiet"]
    assert main(argv) == 0
    assert "recovery_forget_rouge@relearn" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "attacked" / "metrics.json").read_text())
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["recovery_forget_rouge_at_relearn"] == pytest.approx(
        metrics["unlearned"]["recovery_forget_rouge@relearn"], nan_ok=True
    )
    for model in ("original", "retrained", "unlearned"):
        assert {k: v for k, v in metrics[model].items() if "@" not in k} == pytest.approx(clean[model], nan_ok=True)
        for label in ("relearn", "int4", "prefix"):
            row = metrics[f"{model}@{label}"]
            assert set(row) == set(clean[model])
            assert metrics[model][f"forget_rouge@{label}"] == row["forget_rouge"]
            if model != "original":
                assert f"recovery_forget_rouge@{label}" in metrics[model]
        assert set(metrics[f"{model}@mc"]) == {
            f"{s}_mc_{k}" for s in ("forget", "retain", "world") for k in ("prob", "acc")
        }
        assert not any(k.startswith("recovery_") and k.endswith("@mc") for k in metrics[model])
    assert metrics["original@int4"]["forget_rouge"] > 0.5  # 4 bits do not simply destroy the model
    assert main(["report", str(tmp_path / "attacked")]) == 0
    page = (tmp_path / "attacked" / "report.html").read_text()
    assert "After the attacks" in page and "recovery_forget_rouge@int4" in page and "unlearned@int4" not in page
    assert "forget_mc_prob@mc" in page


def test_sweeps_may_optimise_attacked_metrics_and_recovery(llm_cache):
    raw = tiny_spec(llm_cache)
    raw["eval"]["robustness"] = [{"attack": "relearn"}]
    sweep = {
        "name": "robust",
        "experiment": raw,
        "space": {"method.beta": {"uniform": [0.5, 4.0]}},
        "objectives": [
            {"metric": "retain_rouge", "mode": "max"},
            {"metric": "forget_rouge@relearn", "mode": "min"},
            {"metric": "recovery_forget_prob@relearn", "mode": "min"},
        ],
    }
    assert parse_sweep(sweep, check_files=False).objectives[1].metric == "forget_rouge@relearn"
    raw["eval"]["robustness"].append({"attack": "probe", "template": "multiple_choice"})
    sweep["objectives"][1]["metric"] = "forget_mc_prob@multiple_choice"
    assert parse_sweep(sweep, check_files=False).objectives[1].metric == "forget_mc_prob@multiple_choice"
    sweep["objectives"][1]["metric"] = "recovery_forget_mc_prob@multiple_choice"  # no clean value: no ratio
    with pytest.raises(SpecError, match="unknown metric 'recovery_forget_mc_prob@multiple_choice'"):
        parse_sweep(sweep, check_files=False)
    sweep["objectives"][1]["metric"] = "forget_rouge@int4"
    with pytest.raises(SpecError, match=r"objectives.1.metric: unknown metric 'forget_rouge@int4'"):
        parse_sweep(sweep, check_files=False)


@pytest.mark.parametrize(
    ("attack", "says"),
    [
        ({"attack": "jailbreak"}, "eval.robustness.0"),
        ({"attack": "quantize", "bits": 3}, "eval.robustness.0.quantize.bits"),
        ({"attack": "probe", "template": "no placeholder"}, "neither a built-in"),
        ({"attack": "probe", "template": "{question} as {role}"}, r"only \{question\}, .* may appear in braces"),
        ({"attack": "probe", "template": "multiple_choice", "choice": "word"}, "eval.robustness.0.probe.choice"),
        ({"attack": "relearn", "fraction": 1.0}, "eval.robustness.0.relearn.fraction"),
    ],
)
def test_bad_attacks_name_the_key(llm_cache, attack, says):
    raw = tiny_spec(llm_cache)
    raw["eval"]["robustness"] = [attack]
    with pytest.raises(SpecError, match=says):
        parse_experiment(raw, check_files=False)


def test_two_attacks_with_one_label_are_refused(llm_cache):
    raw = tiny_spec(llm_cache)
    raw["eval"]["robustness"] = [{"attack": "quantize"}, {"attack": "quantize", "bits": 8}]
    with pytest.raises(SpecError, match="two attacks are labelled 'int8'"):
        parse_experiment(raw, check_files=False)


@pytest.mark.parametrize(
    ("spec", "attack"),
    [
        ("dlfd_digits.yaml", {"attack": "relearn"}),
        ("uot_digits.yaml", {"attack": "relearn"}),
        ("barycenter_tabular.yaml", {"attack": "probe"}),
    ],
)
def test_every_family_refuses_two_attacks_with_one_label(spec, attack):
    from otu.spec import load_yaml

    raw = load_yaml(Path(__file__).resolve().parents[1] / "sweeps/experiments" / spec)
    raw.setdefault("eval", {})["robustness"] = [attack, {**attack, "name": "again"}]
    parse_experiment(raw, check_files=False)
    raw["eval"]["robustness"] = [attack, attack]
    with pytest.raises(SpecError, match=f"eval.robustness: .*two attacks are labelled '{attack['attack']}'"):
        parse_experiment(raw, check_files=False)


def test_attacks_a_family_does_not_have_are_refused(tmp_path):
    from otu.spec import load_yaml

    raw = load_yaml(Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml")
    raw.setdefault("eval", {})["robustness"] = [{"attack": "quantize", "bits": 4}]
    with pytest.raises(SpecError, match="eval.robustness.0.attack"):
        parse_experiment(raw, check_files=False)
    raw = load_yaml(Path(__file__).resolve().parents[1] / "sweeps/experiments/barycenter_tabular.yaml")
    raw.setdefault("eval", {})["robustness"] = [{"attack": "relearn"}]
    with pytest.raises(SpecError, match="eval.robustness"):
        parse_experiment(raw, check_files=False)


def test_published_relearn_recipes_are_presets_and_lora_relearning_merges(prepared):
    _, prepared = prepared
    lucki = Relearn.model_validate({"attack": "relearn", "preset": "lucki", "epochs": 1})
    assert (lucki.lora.r, lucki.lora.alpha, lucki.lr, lucki.epochs, lucki.size) == (128, 16.0, 2e-4, 1, 10)
    ou = Relearn.model_validate({"attack": "relearn", "preset": "open_unlearning"})
    assert (ou.data, ou.epochs, ou.lr, ou.batch_size, ou.grad_accum) == ("forget", 1, 2e-5, 8, 4)
    assert attacks.relearn_steps(ou, 400) == 13  # ceil(400 / 32), TOFU forget10's one epoch

    records, splits = attacks.relearn_split(prepared.splits, lucki, seed=0)
    assert len(records) == min(10, len(prepared.splits["world"])) and splits is prepared.splits
    model = prepared.model("original")
    relearned = attacks.relearn(model, prepared.encoder(), records, lucki, seed=0)
    assert type(relearned) is type(model)  # adapters merged: a plain model again
    moved = [
        n for (n, p), q in zip(relearned.named_parameters(), model.parameters(), strict=True) if not torch.equal(p, q)
    ]
    assert moved and all("proj" in n for n in moved)


@pytest.mark.parametrize(
    ("attack", "says"),
    [
        ({"attack": "relearn", "fraction": 0.01}, "leaves no item to relearn"),
        ({"attack": "probe", "template": "paraphrase"}, "uses paraphrased_question"),
    ],
)
def test_attacks_the_data_cannot_feed_fail_before_any_work(tmp_path, capsys, attack, says):
    """``otu validate`` (and ``otu run`` before preparing anything) names the attack."""
    import yaml

    from otu.cli import main

    rows = [
        {"entity": name, "question": f"{name} Q{i}?", "answer": f"A{i}", "paraphrased_answer": f"P{i}",
         "perturbed_answer": [f"X{i}", f"Y{i}"]}
        for name in ("Ann", "Bob", "Cy") for i in range(6)
    ]  # fmt: skip
    data, world = tmp_path / "records.jsonl", tmp_path / "world.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    world.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "entity"}) + "\n" for r in rows[6:]))
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["data"] = {
        "records": str(data), "world": str(world), "target": "Ann", "neighbours": ["Bob"], "holdout": ["Cy"]
    }  # fmt: skip
    raw["eval"]["robustness"] = [attack]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "eval.robustness" in err and says in err


# ---------------------------------------------------------------- vision: k-shot relearning


def test_vision_k_shot_relearning_scores_the_other_forget_images(tmp_path):
    """DLFD on digits, attacked by relearning 10 forget images: the rows and the recovery of the
    forgetting score are written, and the clean rows are what a run without the attack writes."""
    from otu.runtime.experiment import run_experiment
    from otu.spec import load_yaml

    raw = load_yaml(Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml")
    raw["tracking"] = {"cache_dir": str(tmp_path / "cache")}
    raw["eval"] = {**raw.get("eval", {}), "plots": False}
    clean = run_experiment(parse_experiment(raw), tmp_path / "clean").metrics
    raw["eval"]["robustness"] = [{"attack": "relearn", "shots": 10, "epochs": 20, "lr": 1e-3}]
    metrics = run_experiment(parse_experiment(raw), tmp_path / "attacked").metrics
    for model in ("original", "retrained", "unlearned"):
        assert {k: v for k, v in metrics[model].items() if "@" not in k} == pytest.approx(clean[model])
        assert set(metrics[f"{model}@relearn"]) == set(clean[model])
    assert "recovery_forgetting_score@relearn" in metrics["unlearned"]
    assert "recovery_forgetting_score@relearn" in metrics["retrained"]


def test_vision_relearn_shots_must_leave_forget_images(tmp_path):
    from otu.spec import load_yaml

    raw = load_yaml(Path(__file__).resolve().parents[1] / "sweeps/experiments/dlfd_digits.yaml")
    raw.setdefault("eval", {})["robustness"] = [{"attack": "relearn", "shots": 100000}]
    with pytest.raises(SpecError, match=r"eval.robustness.0.shots: 100000 of the \d+ forget images"):
        parse_experiment(raw)
