r"""Entity-unlearning metrics (TOFU / MUSE conventions) of one causal LM on QA splits.

Per item, with :math:`\ell` the mean answer-token NLL given the question:

* probability :math:`e^{-\ell(a)}`; ROUGE-L recall of the greedy generation against the answer
  (rouge-score, Porter stemmer);
* truth ratio :math:`R = \exp(\ell(\tilde a) - \overline{\ell(\hat a_j)})` (mean perturbed
  probability over paraphrased probability, geometric means per token), reported as
  :math:`\mathrm{mean}\,\min(R, 1/R)` on forget and :math:`\mathrm{mean}\,\max(0, 1-R)` elsewhere;
* ``fq`` = harmonic mean of (1−prob, 1−ROUGE, TR) on forget, ``rq`` = harmonic mean of (prob,
  ROUGE, TR) on retain and world;
* ``ks_forget_quality``: KS-test p-value between this model's and the retain-only model's per-item
  forget truth ratios R;
* MIA AUCs of forget (members) vs holdout (non-members), membership score higher = member: LOSS
  (:math:`-\ell`), zlib (:math:`-\ell/\text{zlib bytes}`), Min-K% (mean of the lowest k-fraction
  token log-probs), Min-K%++ (same on :math:`(\log p_t-\mu_t)/\sigma_t` with μ, σ the mean and std
  of log p under the model's next-token distribution);
* ``privleak`` = (AUC − AUC_retain_only)/AUC_retain_only × 100 on the Min-K% attack (MUSE).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from otu.llm.data import Record
from otu.llm.text import IGNORE, Encoder


@dataclass
class AnswerScores:
    """Per-answer scores: mean NLL, Min-K% and Min-K%++ statistics."""

    nll: np.ndarray
    mink: np.ndarray
    minkpp: np.ndarray


@torch.no_grad()
def score_answers(
    model: nn.Module,
    encoder: Encoder,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int,
    k: float,
) -> AnswerScores:
    device = next(model.parameters()).device
    nll, mink, minkpp = [], [], []
    for start in range(0, len(questions), batch_size):
        batch = encoder.batch(
            questions[start : start + batch_size], answers[start : start + batch_size]
        ).to(device)
        logits = (
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            .logits[:, :-1]
            .float()
        )
        targets = batch.labels[:, 1:]
        mask = targets != IGNORE
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        probs = logp_all.exp()
        mu = (probs * logp_all).sum(-1)
        sigma = ((probs * logp_all.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
        z = (logp - mu) / sigma
        for i in range(len(batch)):
            lp, zz = logp[i][mask[i]], z[i][mask[i]]
            nll.append(-lp.mean().item())
            mink.append(_lowest_mean(lp, k))
            minkpp.append(_lowest_mean(zz, k))
    return AnswerScores(np.array(nll), np.array(mink), np.array(minkpp))


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    count = max(1, math.ceil(k * values.numel()))
    return torch.sort(values).values[:count].mean().item()


@torch.no_grad()
def generate(
    model: nn.Module,
    encoder: Encoder,
    questions: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy generations (left-padded batches), decoded without special tokens."""
    device = next(model.parameters()).device
    tok = encoder.tokenizer
    out: list[str] = []
    for start in range(0, len(questions), batch_size):
        ids, mask = encoder.prompts(questions[start : start + batch_size])
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=encoder.pad_id,
            eos_token_id=tok.eos_token_id,
        )
        out += tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in out]


def rouge_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array(
        [
            scorer.score(ref, pred)["rougeL"].recall
            for pred, ref in zip(predictions, references, strict=True)
        ]
    )


def truth_ratios(
    model: nn.Module, encoder: Encoder, records: Sequence[Record], batch_size: int
) -> np.ndarray:
    """Per item :math:`R = \\exp(\\ell(\\text{paraphrased}) - \\text{mean}_j\\,\\ell(\\text{perturbed}_j))`."""
    questions = [r.question for r in records]
    para = score_answers(
        model, encoder, questions, [r.paraphrased_answer for r in records], batch_size, 1.0
    ).nll
    flat_q = [r.question for r in records for _ in r.perturbed_answer]
    flat_a = [a for r in records for a in r.perturbed_answer]
    pert = score_answers(model, encoder, flat_q, flat_a, batch_size, 1.0).nll
    offsets = np.cumsum([0] + [len(r.perturbed_answer) for r in records])
    mean_pert = np.array([pert[offsets[i] : offsets[i + 1]].mean() for i in range(len(records))])
    return np.exp(para - mean_pert)


def harmonic_mean(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=float)
    if np.any(values <= 0):
        return 0.0
    return float(len(values) / np.sum(1.0 / values))


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of telling members from non-members by score (higher = member)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, nonmember_scores]))


def zlib_bytes(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def mia_scores(scores: AnswerScores, answers: Sequence[str]) -> dict[str, np.ndarray]:
    """Membership scores of each attack (higher = more likely a training member)."""
    z = np.array([zlib_bytes(a) for a in answers], dtype=float)
    return {
        "loss": -scores.nll,
        "zlib": -scores.nll / z,
        "mink": scores.mink,
        "minkpp": scores.minkpp,
    }
