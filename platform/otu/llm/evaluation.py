"""Evaluate one causal LM on the forget / retain / world / holdout splits → the family's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp
from torch import nn

from otu.llm.data import Record, Splits
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


def model_stats(model: nn.Module, encoder: Encoder, splits: Splits, eval_spec) -> ModelStats:
    """Per-item numbers; world probability is normalised over the perturbed answers (TOFU)."""
    bs, k = eval_spec.batch_size, eval_spec.mink_fraction
    lengths = {"forget": eval_spec.max_new_tokens, "retain": eval_spec.max_new_tokens}
    lengths["world"] = eval_spec.world_max_new_tokens
    prob, rouge, ratio, mia, gens = {}, {}, {}, {}, {}
    for name in (*QA_SPLITS, "holdout"):
        records: list[Record] = splits[name]
        questions, answers = [r.question for r in records], [r.answer for r in records]
        scores = score_answers(model, encoder, questions, answers, bs, k)
        if name in ("forget", "holdout"):
            mia[name] = mia_scores(scores, answers)
        if name == "holdout":
            continue
        options = option_scores(model, encoder, records, bs)
        prob[name] = (
            normalised_probability(scores.nll, options.perturbed)
            if name == "world"
            else np.exp(-scores.nll)
        )
        gens[name] = generate(model, encoder, questions, bs, lengths[name])
        rouge[name] = rouge_recall(gens[name], answers)
        ratio[name] = options.truth_ratios()
    return ModelStats(prob, rouge, ratio, mia, gens)


def metrics(stats: ModelStats, oracle: ModelStats | None) -> dict[str, float]:
    """The family's metric dict; oracle-relative metrics are NaN without a retain-only model."""
    out: dict[str, float] = {}
    for name in QA_SPLITS:
        r = stats.truth_ratio[name]
        tr = np.minimum(r, 1.0 / r) if name == "forget" else np.maximum(0.0, 1.0 - r)
        out[f"{name}_prob"] = float(stats.prob[name].mean())
        out[f"{name}_rouge"] = float(stats.rouge[name].mean())
        out[f"{name}_truth_ratio"] = float(tr.mean())
    out["fq"] = harmonic_mean(
        [1 - out["forget_prob"], 1 - out["forget_rouge"], out["forget_truth_ratio"]]
    )
    out["rq"] = harmonic_mean(
        [out[f"{s}_{m}"] for s in ("retain", "world") for m in ("prob", "rouge", "truth_ratio")]
    )
    aucs = {
        a: mia_auc(stats.mia["forget"][a], stats.mia["holdout"][a]) for a in stats.mia["forget"]
    }
    for attack, auc in aucs.items():
        out[f"mia_auc_{attack}"] = auc
    if oracle is None:
        out["ks_forget_quality"] = float("nan")
        out["privleak"] = float("nan")
    else:
        out["ks_forget_quality"] = float(
            ks_2samp(stats.truth_ratio["forget"], oracle.truth_ratio["forget"]).pvalue
        )
        base = mia_auc(oracle.mia["forget"]["mink"], oracle.mia["holdout"]["mink"])
        out["privleak"] = privleak(aucs["mink"], base)
    return out
