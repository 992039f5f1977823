"""MUSE in the LLM family: the muse layout (local ``datasets`` directories, per-split JSON files, the
synthetic MUSE-shaped corpus), unlearning on text chunks, and MUSE's criteria as muse_bench
(swj0419/muse_bench) computes them, each pinned against a hand-computed case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_llm_checkpoints import one_line_error

from otu.errors import OtuError
from otu.llm.data import Record
from otu.llm.metrics import mia_auc, score_texts
from otu.llm.models import build_tiny_model, train_tokenizer
from otu.llm.muse import chunk_texts, muse_splits
from otu.llm.muse_eval import (
    Completion,
    MuseStats,
    cut_at_stopwords,
    knowmem_prompt,
    muse_metrics,
    rouge_l_f1,
    verbmem_completions,
)
from otu.llm.muse_spec import MUSE_METRICS, MuseEval
from otu.llm.spec import LLMData, TinyModel
from otu.llm.synthetic import generate_muse, write_muse
from otu.llm.text import IGNORE, Encoder
from otu.spec import parse_experiment

REPO = Path(__file__).resolve().parents[1]
TINY_SPEC = REPO / "sweeps" / "experiments" / "muse_tiny_optout.yaml"


def tiny_tokenizer():
    corpus = generate_muse(0)
    texts = [r["text"] for split in corpus["raw"].values() for r in split]
    return train_tokenizer(texts + ["Question: Answer:"], 400)


def tiny_muse(cache_dir: Path, **overrides) -> dict:
    raw = yaml.safe_load(TINY_SPEC.read_text())
    raw["tracking"] = {"cache_dir": str(cache_dir)}
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    return raw


# ---------------------------------------------------------------- the layout


def test_muse_layout_reads_saved_datasets_and_muse_bench_json_files_alike(tmp_path):
    """The published layout two ways: one ``save_to_disk`` DatasetDict per subset (what
    ``load_dataset("muse-bench/MUSE-News", subset)`` returns) and muse_bench's load_data.py files
    (load_data.py:8-39: raw / privleak as JSON lists of strings, verbmem / knowmem as rows)."""
    corpus = generate_muse(3)
    write_muse(tmp_path / "hub", 3)
    for subset, splits in corpus.items():
        for split, rows in splits.items():
            path = tmp_path / "files" / subset / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            plain = subset in ("raw", "privleak", "sust", "scal")
            path.write_text(json.dumps([r["text"] for r in rows] if plain else rows))
    synthetic = muse_splits(LLMData(layout="muse", synthetic=True, synthetic_seed=3), 0)
    for source in ("hub", "files"):
        read = muse_splits(LLMData(layout="muse", records=str(tmp_path / source)), 0)
        assert read == synthetic
    assert [r.kind for r in synthetic["forget"]] == ["text"] * 4
    assert synthetic["forget"][0].answer == corpus["raw"]["forget"][0]["text"]
    assert synthetic["holdout"][0].answer == corpus["privleak"]["holdout"][0]["text"]
    assert (synthetic["verbmem"][0].question, synthetic["verbmem"][0].answer) == tuple(
        corpus["verbmem"]["forget"][0].values()
    )
    assert len(synthetic["knowmem_forget"]) == 11 and len(synthetic["knowmem_forget_icl"]) == 1
    assert len(synthetic["target_train"]) == 12 and len(synthetic["oracle_train"]) == 8
    fold = muse_splits(LLMData(layout="muse", synthetic=True, muse={"forget_subset": "sust", "forget": "forget_2"}), 0)
    assert [r.answer for r in fold["forget"]] == [r["text"] for r in generate_muse(0)["sust"]["forget_2"]]


def test_muse_bad_input_is_one_line_naming_the_key(tmp_path):
    write_muse(tmp_path / "muse", 0)
    (tmp_path / "partial").mkdir()
    with pytest.raises(OtuError, match=r"task\.data\.muse\.forget: .*forget_9"):
        muse_splits(LLMData(layout="muse", records=str(tmp_path / "muse"), muse={"forget": "forget_9"}), 0)
    with pytest.raises(OtuError, match=r"task\.data\.muse\.forget: .*no 'raw' directory"):
        muse_splits(LLMData(layout="muse", records=str(tmp_path / "partial")), 0)
    raw = tiny_muse(tmp_path)
    raw["task"]["data"].pop("synthetic")
    assert "layout muse: give records" in one_line_error(raw)
    raw["task"]["data"] |= {"records": str(tmp_path / "muse"), "target": "x"}
    assert "no target" in one_line_error(raw)
    assert "task.data.world: " in one_line_error(tiny_muse(tmp_path, **{"method.world_weight": 1.0}))


def test_muse_chunks_are_2048_tokens_unless_set():
    assert LLMData(layout="muse", synthetic=True).max_length == 2048
    assert LLMData(layout="muse", synthetic=True, max_length=64).max_length == 64


def test_muses_criteria_are_sweep_objectives_and_qa_metrics_are_not(tmp_path):
    from otu.errors import SpecError
    from otu.spec import parse_sweep

    sweep = {
        "name": "muse-front",
        "experiment": tiny_muse(tmp_path / "cache"),
        "space": {"method.beta": {"uniform": [0.5, 4.0]}},
        "objectives": [{"metric": "knowmem_r", "mode": "max"}, {"metric": "verbmem_f", "mode": "min"}],
    }
    assert [o.metric for o in parse_sweep(sweep, check_files=False).objectives] == ["knowmem_r", "verbmem_f"]
    sweep["objectives"][1]["metric"] = "forget_rouge"  # a QA layout's metric: a MUSE run reports none
    with pytest.raises(SpecError, match="objectives.1.metric: unknown metric 'forget_rouge'"):
        parse_sweep(sweep, check_files=False)


def test_text_chunks_follow_open_unlearnings_pretraining_dataset():
    """src/data/pretraining.py:71-84: the texts joined by blank lines, tokenized without special
    tokens and cut every max_length tokens; each chunk then trains on BOS + its tokens with every
    token after the BOS a label (src/data/utils.py:143-190 with an empty prefix)."""
    tok = tiny_tokenizer()
    docs = [Record("", r["text"], kind="text") for r in generate_muse(0)["raw"]["forget"]]
    chunks = chunk_texts(docs, tok, 16)
    ids = tok("\n\n".join(d.answer for d in docs), add_special_tokens=False)["input_ids"]
    assert len(chunks) == math.ceil(len(ids) / 16)
    assert [tok.decode(ids[i : i + 16]) for i in range(0, len(ids), 16)] == [c.answer for c in chunks]
    encoder = Encoder(tok, "Question: {question}\nAnswer: ", 16)
    batch = encoder.records(chunks[:2])
    first, labels = encoder.text(chunks[0].answer)
    assert first[0] == tok.bos_token_id and len(first) <= 17
    assert labels == [IGNORE, *first[1:]]
    assert batch.labels[0, : len(labels)].tolist() == labels


# ---------------------------------------------------------------- the criteria, by hand


def test_rouge_l_f1_is_muse_benchs_unstemmed_fmeasure():
    """logger.py:10-13 (rougeL, use_stemmer=False) and :17-24 (the fmeasure is ``rougeL``, the key
    eval.py aggregates as ``mean_rougeL``): "the cats sat" vs "the cat sat on" share the, sat: P 2/3,
    R 2/4, F1 4/7; stemmed (cats → cat) 3 of 3 and 3 of 4: 6/7."""
    assert rouge_l_f1(["the cats sat"], ["the cat sat on"]) == pytest.approx([4 / 7])
    assert rouge_l_f1(["the cats sat"], ["the cat sat on"], stemmer=True) == pytest.approx([6 / 7])


def test_knowmem_prompt_and_answer_cut_are_muse_benchs():
    """knowmem.py:22-29 (the ICL shots, then the question) and :7-9, :50 (the answer before the first
    "\\n\\n", "\\nQuestion", "Question:" in turn)."""
    icl = [Record("Who?", "Ann"), Record("Where?", "Oslo")]
    assert (
        knowmem_prompt("When?", icl)
        == "Question: Who?\nAnswer: Ann\n\nQuestion: Where?\nAnswer: Oslo\n\nQuestion: When?\nAnswer: "
    )
    stops = MuseEval().knowmem_stopwords
    assert cut_at_stopwords(" 1990\nQuestion: Who?", stops) == " 1990"
    assert cut_at_stopwords(" 1990 Question: x\n\ny", stops) == " 1990 "
    assert cut_at_stopwords("\n\n1990", stops) == ""


def test_verbmem_cuts_the_reference_to_max_new_tokens_counting_the_bos():
    """verbmem.py:22 ``tokenizer(gt, add_special_tokens=True).input_ids[:, :max_new_tokens]``: the BOS
    is one of the max_new_tokens, so the reference keeps max_new_tokens − 1 text tokens."""
    tok = tiny_tokenizer()
    model = build_tiny_model(TinyModel(hidden=32, heads=2, intermediate=64, vocab=400), tok, 64, 0).eval()
    encoder = Encoder(tok, "Question: {question}\nAnswer: ", 64)
    item = Record("Nendbre Sounsil of", "Velouxholm spoke to the Gazette this week.")
    [done] = verbmem_completions(model, encoder, [item], MuseEval(verbmem_max_new_tokens=4), 1)
    kept = tok(item.answer, add_special_tokens=False)["input_ids"][:3]
    assert done.reference == tok.decode(kept)
    assert done.rouge == pytest.approx(rouge_l_f1([done.generation], [done.reference])[0])


def test_privleak_text_scores_read_every_token_after_the_bos():
    """privleak.py:13-28 (log p of every token after the first, BOS prepended by ``encode``) and
    :42-46 (Min-k%: the mean of the int(k·n) lowest); otu's score is muse_bench's −Min-k%."""
    tok = tiny_tokenizer()
    model = build_tiny_model(TinyModel(hidden=32, heads=2, intermediate=64, vocab=400), tok, 64, 0).eval()
    encoder = Encoder(tok, "Question: {question}\nAnswer: ", 64)
    text = "Nendbre Sounsil of Velouxholm spoke to the Gazette this week."
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0].numpy()
    k = int(len(logp) * 0.4)
    muse_min_k = -np.mean(np.sort(logp)[:k])
    scores = score_texts(model, encoder, [text], 1, 0.4)
    assert scores.mink[0] == pytest.approx(-muse_min_k, rel=1e-5)
    assert scores.nll[0] == pytest.approx(-logp.mean(), rel=1e-5)


def test_privleak_is_muse_benchs_relative_auc_with_forget_as_the_non_member_class():
    """privleak.py:58-61, 85-90: roc_curve(y, −ppl) with forget labelled 0 and holdout 1, so MUSE's
    AUC is 1 − the conventional forget-as-member AUC; eval.py:78: (AUC − AUC_retrain) / AUC_retrain ×
    100. Forget Min-K scores [−1, −2] vs holdout [−3, −1.5]: 3 of 4 pairs rank forget higher,
    conventional AUC 0.75, MUSE's 0.25; against a published AUC_retrain of 0.5: −50."""
    from sklearn.metrics import auc, roc_curve

    forget, holdout = np.array([-1.0, -2.0]), np.array([-3.0, -1.5])
    fpr, tpr, _ = roc_curve([0, 0, 1, 1], np.r_[forget, holdout])  # muse_bench's −ppl is otu's score
    assert auc(fpr, tpr) == pytest.approx(1 - mia_auc(forget, holdout)) == pytest.approx(0.25)

    def stats(f, h, rouge=1.0):
        scores = {a: (f, h) for a in ("loss", "zlib", "mink", "minkpp")}
        mia = {"forget": {a: s[0] for a, s in scores.items()}, "holdout": {a: s[1] for a, s in scores.items()}}
        done = [Completion("p", "r", "g", rouge)]
        return MuseStats(done, {"forget": done, "retain": done * 2}, mia)

    published = muse_metrics(stats(forget, holdout, 0.5), None, MuseEval(privleak_retrain_auc=0.5))
    assert published["privleak"] == pytest.approx(-50.0)
    assert published["verbmem_f"] == published["knowmem_f"] == pytest.approx(50.0)
    assert published["n_knowmem_retain"] == 2
    oracle = stats(np.array([-1.0, -3.0]), np.array([-2.0, -1.5]))  # conventional AUC 0.5
    assert muse_metrics(stats(forget, holdout), oracle, MuseEval())["privleak"] == pytest.approx(-50.0)
    assert math.isnan(muse_metrics(stats(forget, holdout), None, MuseEval())["privleak"])


# ---------------------------------------------------------------- runs


def test_a_tiny_muse_run_writes_muses_criteria_generations_and_plot(tmp_path):
    """The shipped tiny spec, cut short: unlearning on text chunks and MUSE's rows for every model."""
    from otu.runtime.experiment import run_experiment

    raw = tiny_muse(tmp_path / "cache", **{"method.steps": 2})
    raw["task"]["model"]["epochs"] = 3
    result = run_experiment(parse_experiment(raw), tmp_path / "run")
    assert set(result.metrics) == {"original", "retrained", "unlearned"}
    for row in result.metrics.values():
        assert set(row) == {*MUSE_METRICS, *(f"mia_auc_{a}" for a in ("loss", "zlib", "mink", "minkpp"))}
        assert set(row) == set(parse_experiment(raw).task.data.metrics)  # what sweeps may optimise
        assert row["n_verbmem"] == 4 and row["n_privleak_holdout"] == 4
    assert result.metrics["retrained"]["privleak"] == pytest.approx(0.0)
    lines = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert {r["split"] for r in lines} == {"verbmem", "knowmem_forget", "knowmem_retain"}
    assert (tmp_path / "run" / "plots" / "muse.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        None,  # the shipped OPT-OUT spec
        {"name": "npo_rt", "beta": 2.0, "world_weight": 0.0, "lr": 1e-3, "steps": 40, "batch_size": 4},
    ],
    ids=["optout", "npo_rt"],
)
def test_the_tiny_muse_run_forgets_toward_the_oracle_and_keeps_retain_knowmem(tmp_path_factory, method):
    """VerbMem and forget KnowMem fall at least half way from the original's to the oracle's, retain
    KnowMem keeps ≥ 80 % of the original's."""
    from otu.runtime.experiment import run_experiment

    raw = tiny_muse(tmp_path_factory.getbasetemp() / "muse-cache")
    if method is not None:
        raw["method"] = method
    out = tmp_path_factory.mktemp("muse-run")
    metrics = run_experiment(parse_experiment(raw), out).metrics
    original, oracle, unlearned = metrics["original"], metrics["retrained"], metrics["unlearned"]
    for name in ("verbmem_f", "knowmem_f"):
        assert original[name] > oracle[name] + 10, (name, original[name], oracle[name])
        assert unlearned[name] < original[name] - 0.5 * (original[name] - oracle[name]), (name, metrics)
    assert unlearned["knowmem_r"] >= 0.8 * original["knowmem_r"], metrics
