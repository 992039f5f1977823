"""TOFU as open-unlearning runs it (locuslab/open-unlearning at d3d7cf9): what is fine-tuned, what the
loop retains, how model utility aggregates, the prompt, generation length, Min-K% without the EOS,
extraction strength / exact memorization, and ``max_items`` never cutting the forget set or holdout.

Expected values are written from the reference's definitions (file:line in each docstring), on
TOFU-layout data built here with locuslab/TOFU's configurations and columns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict
from test_llm import tiny_spec
from test_llm_checkpoints import one_line_error

from otu.llm import evaluation
from otu.llm.data import finetune_sets, load_splits
from otu.llm.family import FAMILY
from otu.llm.metrics import extraction_strength, score_answers
from otu.llm.models import CHAT_TEMPLATE, build_tiny_model, train_tokenizer
from otu.llm.spec import SPEC, LLMData, LLMEval, LLMModel, TinyModel
from otu.llm.synthetic import generate_entities
from otu.llm.text import IGNORE, Encoder
from otu.spec import parse_experiment

PERTURBED_COLUMNS = ("question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer")


def save_tofu(root: Path, skip: str | None = None) -> Path:
    """locuslab/TOFU's configurations (one ``train`` split each, its columns): ``full`` = forget01 +
    retain99 (the last 1 % of the authors are forget01), ``retain_perturbed`` a part of retain99 with
    paraphrased / perturbed answers, ``real_authors_perturbed`` / ``world_facts_perturbed`` and
    ``holdout01`` items that no training set holds."""
    gen = generate_entities(3, LLMData(synthetic=True).sizes)
    rows = [r | {"paraphrased_question": "Rephrased: " + r["question"]} for r in gen["records"]]
    qa = [{"question": r["question"], "answer": r["answer"]} for r in rows[:-4]]
    perturbed = [{k: r[k] for k in PERTURBED_COLUMNS} for r in rows[:-4]]
    facts = [{k: w[k] for k in ("question", "answer", "perturbed_answer")} for w in gen["world"]]
    configs = {
        "full": qa,
        "forget01": qa[-4:],
        "forget01_perturbed": perturbed[-4:],
        "retain99": qa[:-4],
        "retain_perturbed": perturbed[:6],
        "real_authors_perturbed": facts[:10],
        "world_facts_perturbed": facts[10:],
        "holdout01": [{"question": r["question"], "answer": r["answer"]} for r in rows[-4:]],
    }
    for name, items in configs.items():
        if name != skip:
            DatasetDict({"train": Dataset.from_list(items)}).save_to_disk(str(root / name))
    return root


@pytest.fixture(scope="module")
def tofu_dir(tmp_path_factory) -> Path:
    return save_tofu(tmp_path_factory.mktemp("tofu"))


def pairs(records) -> list[tuple[str, str]]:
    return [(r.question, r.answer) for r in records]


def config_pairs(root: Path, name: str) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in Dataset.load_from_disk(str(root / name / "train"))]


def test_target_learns_the_fictitious_authors_once_and_the_oracle_retain_only(tofu_dir):
    """open-unlearning fine-tunes the target on TOFU ``full`` (configs/experiment/finetune/tofu/
    default.yaml:6, configs/data/datasets/TOFU_QA_full.yaml:5), each pair once per epoch, and the
    retain model on ``retainNN`` (scripts/tofu_finetune.sh); real authors, world facts, the
    ``*_perturbed`` rows and the holdout are evaluation-only."""
    splits = load_splits(LLMData(layout="tofu", records=str(tofu_dir), tofu={"forget": "forget01"}), 0)
    target, oracle = finetune_sets(splits)
    assert sorted(pairs(target)) == sorted(config_pairs(tofu_dir, "full"))  # forget01 + retain99, nothing twice
    assert len(set(pairs(target))) == len(target)
    assert pairs(oracle) == config_pairs(tofu_dir, "retain99")
    evaluation_only = {
        q
        for name in ("real_authors_perturbed", "world_facts_perturbed", "holdout01")
        for q, _ in config_pairs(tofu_dir, name)
    }
    assert not evaluation_only & {q for q, _ in pairs(target) + pairs(oracle)}
    assert all(not r.perturbed_answer for r in target)  # QA rows, not their *_perturbed twins


def test_the_loop_retains_the_whole_retain_config_unless_told_to_hold_out(tofu_dir):
    """The unlearning data's retain set is ``retain_split`` = retainNN (configs/experiment/unlearn/tofu/
    default.yaml:8,16,36-40), which contains ``retain_perturbed`` (evaluated: TOFU_QA_retain_eval.yaml:5)."""
    data = LLMData(layout="tofu", records=str(tofu_dir), tofu={"forget": "forget01"})
    splits = load_splits(data, 0)
    assert pairs(splits["retain"]) == config_pairs(tofu_dir, "retain99")
    assert set(pairs(splits["retain_eval"])) <= set(pairs(splits["retain"]))
    held = load_splits(data.model_copy(update={"tofu": data.tofu.model_copy(update={"hold_out_retain_eval": True})}), 0)
    assert len(held["retain"]) == len(splits["retain"]) - 6
    assert not set(pairs(held["retain"])) & set(pairs(held["retain_eval"]))
    assert len(splits["real_authors_eval"]) == 10 and splits["world_eval"] == (
        splits["real_authors_eval"] + splits["world_facts_eval"]
    )


def stats_of(per_split: dict[str, tuple[list, list, list]]) -> evaluation.ModelStats:
    """ModelStats from (prob, rouge, truth ratio R) per item of each split."""
    parts = {name: tuple(np.array(v, dtype=float) for v in values) for name, values in per_split.items()}
    parts["world"] = tuple(np.concatenate([parts[p][i] for p in evaluation.WORLD_PARTS]) for i in range(3))
    zeros = {name: np.zeros(len(v[0])) for name, v in parts.items()}
    return evaluation.ModelStats(
        prob={n: v[0] for n, v in parts.items()},
        rouge={n: v[1] for n, v in parts.items()},
        truth_ratio={n: v[2] for n, v in parts.items()},
        exact_memorization=zeros,
        extraction_strength=zeros,
        mia={"forget": {"mink": np.array([2.0, 3.0])}, "holdout": {"mink": np.array([1.0, 0.0])}},
        generations={},
        holdout_items=2,
    )


def test_model_utility_is_the_harmonic_mean_of_nine_numbers():
    """``model_utility`` = hm_aggregate over retain / ra / wf × Prob / ROUGE / Truth_Ratio
    (configs/eval/tofu_metrics/model_utility.yaml:3-13); Truth_Ratio outside forget aggregates as
    ``true_better`` mean(max(0, 1 − R)) (src/evals/metrics/memorization.py:119-120, ra_Truth_Ratio.yaml:13)."""
    stats = stats_of(
        {
            "forget": ([0.9, 0.7], [1.0, 0.5], [0.5, 2.0]),
            "retain": ([0.8, 0.6], [0.9, 0.7], [0.2, 0.4]),  # TR 0.8, 0.6 → 0.7
            "real_authors": ([0.5, 0.3], [0.6, 1.0], [0.5, 1.5]),  # TR 0.5, 0 → 0.25
            "world_facts": ([0.4, 0.4, 0.4], [0.3, 0.6, 0.9], [0.1, 0.1, 0.4]),  # TR 0.8
        }
    )
    out = evaluation.metrics(stats, oracle=None)
    nine = [0.7, 0.8, 0.7, 0.4, 0.8, 0.25, 0.4, 0.6, 0.8]
    assert out["model_utility"] == pytest.approx(9 / sum(1 / v for v in nine))
    assert out["model_utility_terms"] == 9
    assert out["real_authors_truth_ratio"] == pytest.approx(0.25)
    pooled_world = [
        np.mean([0.5, 0.3, 0.4, 0.4, 0.4]),
        np.mean([0.6, 1.0, 0.3, 0.6, 0.9]),
        np.mean([0.5, 0, 0.9, 0.9, 0.6]),
    ]
    assert out["rq"] == pytest.approx(6 / sum(1 / v for v in [0.7, 0.8, 0.7, *pooled_world]))
    assert out["rq_terms"] == 6 and (out["n_forget"], out["n_world"], out["n_holdout"]) == (2, 5, 2)


def test_tofu_prompt_is_open_unlearnings_chat_with_system_prompt_and_date():
    """open-unlearning's Llama-3.2 template args (configs/model/Llama-3.2-1B-Instruct.yaml:8-15), applied
    as ``preprocess_chat_instance`` does (src/data/utils.py:51-70): [system, user] through
    ``apply_chat_template(add_generation_prompt=True, date_string=...)``; QA max_length 512
    (TOFU_QA_full.yaml:10); generation 200 new tokens (configs/generation/default.yaml:4)."""
    data = LLMData(layout="tofu", records="locuslab/TOFU")
    assert (data.system_prompt, data.date_string, data.max_length) == (
        "You are a helpful assistant.",
        "10 Apr 2025",
        512,
    )
    assert LLMEval().generation_lengths("tofu") == (200, 200)
    assert LLMEval().generation_lengths("records") == (128, 512)  # the OPT-OUT authors'
    assert LLMEval(max_new_tokens=7).generation_lengths("tofu") == (7, 200)
    own = LLMData(layout="tofu", records="locuslab/TOFU", system_prompt=None, max_length=64)
    assert (own.system_prompt, own.max_length) == (None, 64)  # the spec's own choices win

    tokenizer = train_tokenizer(["Who is Ada? Ada is a poet. system user assistant Today Date"] * 4, 300, chat=True)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{{ bos_token }}", "{{ bos_token }}[{{ date_string }}]")
    encoder = Encoder(tokenizer, "{question}", 512, True, data.system_prompt, data.date_string)
    chat = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who is Ada?"}]
    expected = tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, date_string="10 Apr 2025"
    )
    assert expected.startswith("<s>[10 Apr 2025]<|start_header_id|>system")
    assert encoder.prompt_ids("Who is Ada?") == tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_min_k_drops_the_final_answer_token_and_loss_keeps_it():
    """Min-K% and Min-K%++ read ``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs``, which drop the last
    labelled token, the EOS (src/evals/metrics/utils.py:129-131, 173-175; mia/min_k.py:24-26); LOSS is
    the mean NLL over every answer token (utils.py:82-96)."""
    tokenizer = train_tokenizer(["Question: who is Ada?\nAnswer: Ada is a poet of the sea."] * 4, 300)
    model = build_tiny_model(TinyModel(layers=1, hidden=32, heads=2, intermediate=64, vocab=300), tokenizer, 48, 0)
    encoder = Encoder(tokenizer, "Question: {question}\nAnswer: ", 48, False)
    question, answer = "who is Ada?", "Ada is a poet of the sea."
    scores = score_answers(model.eval(), encoder, [question], [answer], 4, 0.4)
    ids, labels = encoder.pair(question, answer)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
    positions = [t for t in range(len(ids) - 1) if labels[t + 1] != IGNORE]
    token_lp = np.array([logp[t, ids[t + 1]].item() for t in positions])
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
    assert scores.nll[0] == pytest.approx(-token_lp.mean(), rel=1e-5)
    without_eos = np.sort(token_lp[:-1])
    assert scores.mink[0] == pytest.approx(without_eos[: max(1, int(0.4 * len(without_eos)))].mean(), rel=1e-5)
    greedy = [int(logp[t].argmax()) == ids[t + 1] for t in positions[:-1]]
    assert scores.exact_memorization[0] == pytest.approx(np.mean(greedy))


@pytest.mark.parametrize(
    "hits, expected",
    [
        ([1, 1, 1, 1], 1.0),  # k = 0
        ([0, 1, 1, 1], 0.75),  # k = 1
        ([1, 0, 0, 1], 0.25),  # k = 3: the last token alone matches
        ([1, 1, 1, 0], 0.25),  # no suffix matches: the loop leaves k = n − 1
        ([], 0.0),
    ],
)
def test_extraction_strength_follows_open_unlearnings_loop(hits, expected):
    """ES = 1 − k/n, k the first index with preds[k:] == labels[k:] (src/evals/metrics/memorization.py:
    236-253); with no match the ``for k in range(n)`` loop ends at k = n − 1; no tokens score 0 (251)."""
    assert extraction_strength(torch.tensor(hits, dtype=torch.bool)) == pytest.approx(expected)


def tofu_spec(tmp_path: Path, tofu_dir: Path) -> dict:
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["data"] = {"layout": "tofu", "records": str(tofu_dir), "tofu": {"forget": "forget01"}, "max_length": 48}
    raw["task"]["model"]["epochs"] = 3
    raw["method"]["world_weight"] = 0.0
    raw["eval"] = {"max_new_tokens": 8, "max_items": 3, "plots": False}
    return raw


def test_a_tofu_run_reports_model_utility_and_never_caps_forget_or_holdout(tmp_path, tofu_dir):
    """End to end on the TOFU layout: the prepared target / oracle, evaluated with ``max_items`` 3, cover
    all 4 forget and 4 holdout items (open-unlearning evaluates them whole, tofu.yaml:28-29) and 3 of
    each retain / world part; ``model_utility`` over its 9 numbers."""
    exp = parse_experiment(tofu_spec(tmp_path, tofu_dir))
    assert exp.task.data.system_prompt == "You are a helpful assistant."
    prepared = FAMILY.prepare(exp.job(), exp.context())
    out = FAMILY.evaluate(exp.job(), prepared, prepared.model("original"))
    assert (out["n_forget"], out["n_holdout"], out["n_retain"], out["n_world"]) == (4, 4, 3, 6)
    assert out["model_utility_terms"] == 9 and 0 <= out["model_utility"] <= 1
    assert math.isfinite(out["forget_extraction_strength"]) and 0 <= out["retain_exact_memorization"] <= 1
    assert math.isfinite(out["ks_forget_quality"])


def test_tofu_without_world_needs_world_weight_zero_and_missing_configs_are_named(tmp_path):
    raw = tiny_spec(tmp_path / "cache")
    raw["task"]["data"] = {"layout": "tofu", "records": str(save_tofu(tmp_path / "t1")), "tofu": {"forget": "forget01"}}
    assert one_line_error(raw).startswith("task.data.world: the data has no world training set")
    raw["method"]["world_weight"] = 0.0
    parse_experiment(raw)
    raw["task"]["data"]["records"] = str(save_tofu(tmp_path / "t2", skip="holdout01"))
    message = one_line_error(raw)
    assert message.startswith("task.data.tofu.holdout:") and "'holdout01'" in message


@pytest.mark.parametrize("name, method", [("tofu_ga", "ga"), ("tofu_graddiff", "graddiff"), ("tofu_npo", "npo_rt")])
def test_tofu_presets_carry_open_unlearnings_recipe(name, method):
    """scripts/tofu_unlearn.sh:20-24,38-54 and docs/repro.md's setup: open-unlearning's fine-tuned
    ``tofu_Llama-3.2-1B-Instruct_full`` unlearned at lr 1e-5 for 10 epochs, effective batch 32, weight
    decay 0.01 (configs/experiment/unlearn/tofu/default.yaml:44-47), retain90 as the oracle, NPO's
    β 0.1 and α = γ = 1 (configs/trainer/NPO.yaml:5-8)."""
    from test_llm import REPO

    raw = yaml.safe_load((REPO / f"sweeps/experiments/{name}.yaml").read_text())
    data, model = LLMData(**raw["task"]["data"]), LLMModel(**raw["task"]["model"])
    spec = SPEC.methods[method].spec(**raw["method"])
    assert (
        data.layout == "tofu"
        and data.tofu.retain == "retain90"
        and data.system_prompt == "You are a helpful assistant."
    )
    assert model.path == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full" and model.epochs == 0
    assert model.retain_path == "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90"
    assert (spec.lr, spec.epochs, spec.batch_size, spec.weight_decay, spec.warmup_epochs) == (1e-5, 10, 32, 0.01, 1.0)
    assert raw["compute"]["grad_accum"] == 4 and spec.batch_size // raw["compute"]["grad_accum"] == 8
    if method != "ga":
        assert (spec.retain_weight, spec.world_weight) == (1.0, 0.0)
    if method == "npo_rt":
        assert (spec.beta, spec.reduction) == (0.1, "sequence_sum")


def test_warm_up_follows_open_unlearnings_steps_and_hf_schedule():
    """warmup_steps = int(warmup_epochs · len(dataset)) // (batch · accum · devices) (src/trainer/__init__.py:
    33-42; the unlearning dataset's length is the forget set's, anchor forget), then HF's
    ``get_linear_schedule_with_warmup``."""
    from transformers import get_linear_schedule_with_warmup

    from otu.llm.engine import lr_lambda, warmup_steps

    method = SPEC.methods["graddiff"].spec(name="graddiff", batch_size=32, epochs=10, warmup_epochs=1.0)
    assert warmup_steps(method, 400, phases=1) == 12 and warmup_steps(method, 400, phases=2) == 24
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=12, num_training_steps=130)
    ours = lr_lambda("linear", 130, 12)
    for k in range(131):
        assert ours(k) == pytest.approx(hf.lr_lambdas[0](k))
    assert lr_lambda("constant", 130, 12)(6) == 0.5 and lr_lambda("constant", 130, 12)(100) == 1.0
