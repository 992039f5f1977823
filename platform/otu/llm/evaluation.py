"""Evaluate one causal LM on the evaluation splits (forget / retain / world evaluation items and the
holdout, as the layout defines them) → the family's metrics and per-item generation rows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import ks_2samp
from torch import nn

from otu.llm.data import EVAL, Record, Splits
from otu.llm.gradnorm import grad_norms
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
WORLD_PARTS = ("real_authors", "world_facts")
"""TOFU's world: real authors and world facts, evaluated (and aggregated) apart, pooled as ``world``."""
CAPPED = ("retain_eval", "world_eval", *(f"{part}_eval" for part in WORLD_PARTS))
"""Splits ``eval.max_items`` caps; the forget set and the holdout are always evaluated whole."""


@dataclass
class ModelStats:
    """Per-item numbers of one model, enough to compute every metric (and compare to an oracle);
    keyed by QA split (``forget``, ``retain``, ``world`` and, on TOFU, the world's parts)."""

    prob: dict[str, np.ndarray]
    rouge: dict[str, np.ndarray]
    truth_ratio: dict[str, np.ndarray]
    exact_memorization: dict[str, np.ndarray]
    extraction_strength: dict[str, np.ndarray]
    mia: dict[str, dict[str, np.ndarray]]
    """``{"forget"|"holdout": {attack: membership scores}}``."""
    generations: dict[str, list[str]]
    holdout_items: int = 0


def world_parts(splits: Splits) -> tuple[str, ...]:
    """The world's separately evaluated parts (TOFU's real authors and world facts), else ``world``."""
    return tuple(p for p in WORLD_PARTS if f"{p}_eval" in splits) or ("world",)


def cap(splits: Splits, max_items: int | None) -> Splits:
    """``splits`` with at most ``max_items`` retain and world evaluation items (per world part)."""
    if max_items is None:
        return dict(splits)
    out = {k: v[:max_items] if k in CAPPED else v for k, v in splits.items()}
    if world_parts(splits) != ("world",):
        out["world_eval"] = [r for part in world_parts(splits) for r in out[f"{part}_eval"]]
    return out


def model_stats(
    model: nn.Module, encoder: Encoder, splits: Splits, eval_spec: LLMEval, layout: str = "records"
) -> ModelStats:
    """Per-item numbers; world probability is normalised over the perturbed answers (TOFU), each world
    part apart; the world's numbers are its parts' items pooled."""
    bs, k = eval_spec.batch_size, eval_spec.mink_fraction
    qa_tokens, world_tokens = eval_spec.generation_lengths(layout)
    stats = ModelStats({}, {}, {}, {}, {}, {}, {})
    parts = world_parts(splits)
    for name in ("forget", "retain", *parts, "holdout"):
        records: list[Record] = splits[EVAL.get(name, f"{name}_eval" if name in WORLD_PARTS else name)]
        questions, answers = [r.question for r in records], [r.answer for r in records]
        scores = score_answers(model, encoder, questions, answers, bs, k)
        if name in ("forget", "holdout"):
            stats.mia[name] = mia_scores(scores, answers)
            if eval_spec.mia_gradnorm:
                stats.mia[name]["gradnorm"] = -grad_norms(model, encoder, questions, answers)
        if name == "holdout":
            stats.holdout_items = len(records)
            continue
        # truth ratio and normalised probability where an item has perturbed answers (not
        # instruction data); NaN truth ratio and plain probability for the others
        scored = [i for i, r in enumerate(records) if r.perturbed_answer]
        prob, ratio = np.exp(-scores.nll), np.full(len(records), np.nan)
        if scored:
            options = option_scores(model, encoder, [records[i] for i in scored], bs)
            ratio[scored] = options.truth_ratios()
            if name in parts:
                prob[scored] = normalised_probability(scores.nll[scored], options.perturbed)
        stats.prob[name], stats.truth_ratio[name] = prob, ratio
        stats.exact_memorization[name] = scores.exact_memorization
        stats.extraction_strength[name] = scores.extraction_strength
        tokens = qa_tokens if name in ("forget", "retain") else world_tokens
        stats.generations[name] = generate(model, encoder, questions, bs, tokens)
        stats.rouge[name] = rouge_recall(stats.generations[name], answers)
    if parts != ("world",):
        pooled = (stats.prob, stats.rouge, stats.truth_ratio, stats.exact_memorization, stats.extraction_strength)
        for per_item in pooled:
            per_item["world"] = np.concatenate([per_item[p] for p in parts])
        stats.generations["world"] = [g for p in parts for g in stats.generations[p]]
    return stats


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
    """The family's metric dict; oracle-relative metrics are NaN without a retain-only model.

    ``model_utility`` is TOFU's (open-unlearning configs/eval/tofu_metrics/model_utility.yaml:3-13,
    ``hm_aggregate``): the harmonic mean of probability, ROUGE and truth ratio on retain and on each
    world part — 9 numbers on TOFU (real authors and world facts apart), 6 elsewhere; ``rq`` is otu's
    (and the OPT-OUT authors') with the world pooled. Numbers that do not exist (no truth ratio on
    instruction data) are left out; ``rq_terms`` / ``model_utility_terms`` count what each covers and
    ``n_<split>`` how many items each split's metrics read."""
    out: dict[str, float] = {}
    parts = tuple(p for p in WORLD_PARTS if p in stats.prob)
    for name in (*QA_SPLITS, *WORLD_PARTS):  # NaN for the world parts where the layout has none
        present = name in stats.prob
        out[f"{name}_prob"] = float(stats.prob[name].mean()) if present else math.nan
        out[f"{name}_rouge"] = float(stats.rouge[name].mean()) if present else math.nan
        out[f"{name}_truth_ratio"] = (
            truth_ratio_score(stats.truth_ratio[name], name == "forget") if present else math.nan
        )
    for name in ("forget", "retain"):
        out[f"{name}_exact_memorization"] = float(np.nanmean(stats.exact_memorization[name]))
        out[f"{name}_extraction_strength"] = float(stats.extraction_strength[name].mean())
    out["fq"] = harmonic_mean([1 - out["forget_prob"], 1 - out["forget_rouge"], out["forget_truth_ratio"]])
    for key, groups in (("rq", ("retain", "world")), ("model_utility", ("retain", *(parts or ("world",))))):
        terms = [out[f"{s}_{m}"] for s in groups for m in ("prob", "rouge", "truth_ratio")]
        terms = [v for v in terms if not math.isnan(v)]
        out[key], out[f"{key}_terms"] = harmonic_mean(terms), float(len(terms))
    for name in QA_SPLITS:
        out[f"n_{name}"] = float(len(stats.prob[name]))
    out["n_holdout"] = float(stats.holdout_items)
    aucs = {a: mia_auc(stats.mia["forget"][a], stats.mia["holdout"][a]) for a in stats.mia["forget"]}
    for attack, auc in aucs.items():
        out[f"mia_auc_{attack}"] = auc
    out.setdefault("mia_auc_gradnorm", math.nan)  # eval.mia_gradnorm off
    if oracle is None:
        out["ks_forget_quality"] = out["privleak"] = out["mia_auc_reference"] = math.nan
    else:
        out["ks_forget_quality"] = float(ks_2samp(stats.truth_ratio["forget"], oracle.truth_ratio["forget"]).pvalue)
        base = mia_auc(oracle.mia["forget"]["mink"], oracle.mia["holdout"]["mink"])
        out["privleak"] = privleak(aucs["mink"], base)
        out["mia_auc_reference"] = mia_auc(*(reference_scores(stats, oracle, split) for split in ("forget", "holdout")))
    return out


def reference_scores(stats: ModelStats, reference: ModelStats, split: str) -> np.ndarray:
    r"""The reference-model attack's membership scores, :math:`\ell_{\mathrm{ref}} - \ell` (mean answer NLLs):
    open-unlearning's score ``target_loss - ref_loss`` (src/evals/metrics/mia/reference.py:23-25), higher
    for non-members there, negated for otu's convention; the reference is the retrained oracle."""
    return stats.mia[split]["loss"] - reference.mia[split]["loss"]


def truth_ratio_score(ratios: np.ndarray, forget: bool) -> float:
    """TOFU's aggregate of per-item truth ratios R: mean min(R, 1/R) on forget, mean max(0, 1−R)
    elsewhere (NaN items left out; NaN with none)."""
    score = np.minimum(ratios, 1.0 / ratios) if forget else np.maximum(0.0, 1.0 - ratios)
    return float(np.nanmean(score)) if np.isfinite(score).any() else math.nan
