"""Evaluate one causal LM on the evaluation splits (forget / retain / world items no retain term
trained on, and the holdout) → the family's metrics and per-item generation rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp
from torch import nn

from otu.llm.data import EVAL, Record, Splits
from otu.llm.metrics import (
    generate,
    harmonic_mean,
    mia_auc,
    mia_scores,
    normalised_probability,
    option_scores,
    privleak,
    rouge_recall,
    score_answers,
)
from otu.llm.spec import LLMEval
from otu.llm.text import Encoder

QA_SPLITS = ("forget", "retain", "world")


@dataclass
class ModelStats:
    """Per-item numbers of one model, enough to compute every metric (and compare to an oracle)."""

    prob: dict[str, np.ndarray]
    rouge: dict[str, np.ndarray]
    truth_ratio: dict[str, np.ndarray]
    mia: dict[str, dict[str, np.ndarray]]
    """``{"forget"|"holdout": {attack: membership scores}}``."""
    generations: dict[str, list[str]]


def cap(splits: Splits, max_items: int | None) -> Splits:
    return {k: v if max_items is None else v[:max_items] for k, v in splits.items()}


def model_stats(model: nn.Module, encoder: Encoder, splits: Splits, eval_spec: LLMEval) -> ModelStats:
    """Per-item numbers; world probability is normalised over the perturbed answers (TOFU)."""
    bs, k = eval_spec.batch_size, eval_spec.mink_fraction
    lengths = {"forget": eval_spec.max_new_tokens, "retain": eval_spec.max_new_tokens}
    lengths["world"] = eval_spec.world_max_new_tokens
    prob, rouge, ratio, mia, gens = {}, {}, {}, {}, {}
    for name in (*QA_SPLITS, "holdout"):
        records: list[Record] = splits[EVAL.get(name, name)]
        questions, answers = [r.question for r in records], [r.answer for r in records]
        scores = score_answers(model, encoder, questions, answers, bs, k)
        if name in ("forget", "holdout"):
            mia[name] = mia_scores(scores, answers)
        if name == "holdout":
            continue
        # truth ratio and normalised probability where an item has perturbed answers (not
        # instruction data); NaN truth ratio and plain probability for the others
        scored = [i for i, r in enumerate(records) if r.perturbed_answer]
        prob[name] = np.exp(-scores.nll)
        ratio[name] = np.full(len(records), np.nan)
        if scored:
            options = option_scores(model, encoder, [records[i] for i in scored], bs)
            ratio[name][scored] = options.truth_ratios()
            if name == "world":
                prob[name][scored] = normalised_probability(scores.nll[scored], options.perturbed)
        gens[name] = generate(model, encoder, questions, bs, lengths[name])
        rouge[name] = rouge_recall(gens[name], answers)
    return ModelStats(prob, rouge, ratio, mia, gens)


def generation_rows(stats: ModelStats, splits: Splits) -> list[dict]:
    """One row per evaluated QA item: split, question, reference, generation and its numbers."""
    rows = []
    for name in QA_SPLITS:
        for i, record in enumerate(splits[EVAL[name]]):
            rows.append(
                {
                    "split": name,
                    "question": record.question,
                    "reference": record.answer,
                    "generation": stats.generations[name][i],
                    "prob": float(stats.prob[name][i]),
                    "rouge": float(stats.rouge[name][i]),
                    "truth_ratio": float(stats.truth_ratio[name][i]),
                }
            )
    return rows


def metrics(stats: ModelStats, oracle: ModelStats | None) -> dict[str, float]:
    """The family's metric dict; oracle-relative metrics are NaN without a retain-only model."""
    out: dict[str, float] = {}
    for name in QA_SPLITS:
        r = stats.truth_ratio[name]
        tr = np.minimum(r, 1.0 / r) if name == "forget" else np.maximum(0.0, 1.0 - r)
        out[f"{name}_prob"] = float(stats.prob[name].mean())
        out[f"{name}_rouge"] = float(stats.rouge[name].mean())
        out[f"{name}_truth_ratio"] = float(np.nanmean(tr)) if np.isfinite(tr).any() else math.nan
    out["fq"] = harmonic_mean([1 - out["forget_prob"], 1 - out["forget_rouge"], out["forget_truth_ratio"]])
    retained = [out[f"{s}_{m}"] for s in ("retain", "world") for m in ("prob", "rouge", "truth_ratio")]
    # instruction data (world) has no truth ratio: rq is over the numbers there are
    out["rq"] = harmonic_mean([v for v in retained if not math.isnan(v)])
    aucs = {a: mia_auc(stats.mia["forget"][a], stats.mia["holdout"][a]) for a in stats.mia["forget"]}
    for attack, auc in aucs.items():
        out[f"mia_auc_{attack}"] = auc
    if oracle is None:
        out["ks_forget_quality"] = float("nan")
        out["privleak"] = float("nan")
    else:
        out["ks_forget_quality"] = float(ks_2samp(stats.truth_ratio["forget"], oracle.truth_ratio["forget"]).pvalue)
        base = mia_auc(oracle.mia["forget"]["mink"], oracle.mia["holdout"]["mink"])
        out["privleak"] = privleak(aucs["mink"], base)
    return out
