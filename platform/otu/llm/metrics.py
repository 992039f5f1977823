r"""Entity-unlearning metrics (TOFU / MUSE conventions) of one causal LM on QA splits.

Per item, with :math:`\ell` the mean answer-token NLL given the question:

* probability :math:`e^{-\ell(a)}` on forget and retain; on world the normalised probability
  :math:`e^{-\ell(a)} / (e^{-\ell(a)} + \sum_j e^{-\ell(\tilde a_j)})` over the perturbed answers
  (TOFU's real-author / world-fact metric, open-unlearning's ``probability_w_options``);
* ROUGE-L recall of the greedy generation (stopped at EOS) against the answer (rouge-score, Porter
  stemmer);
* truth ratio :math:`R = \exp(\ell(\tilde a) - \overline{\ell(\hat a_j)})` (mean perturbed
  probability over paraphrased probability, geometric means per token), reported as
  :math:`\mathrm{mean}\,\min(R, 1/R)` on forget and :math:`\mathrm{mean}\,\max(0, 1-R)` elsewhere;
* ``fq`` = harmonic mean of (1−prob, 1−ROUGE, TR) on forget, ``rq`` = harmonic mean of (prob,
  ROUGE, TR) on retain and world;
* ``ks_forget_quality``: KS-test p-value between this model's and the retain-only model's per-item
  forget truth ratios R;
* MIA AUCs of forget (members) vs holdout (non-members), membership score higher = member: LOSS
  (:math:`-\ell`), zlib (:math:`-\ell/\text{zlib bytes}`), Min-K% (mean of the lowest
  :math:`\max(1, \lfloor k n\rfloor)` of the n token log-probs, Shi et al. 2024), Min-K%++ (same on
  :math:`(\log p_t-\mu_t)/\sigma_t` with μ, σ² the mean and variance of log p under the model's
  next-token distribution, σ² clamped at 1e-6 — Zhang et al. 2024, open-unlearning); Min-K% and
  Min-K%++ read the answer tokens without the final one (the EOS / end-of-turn token), as
  open-unlearning's ``tokenwise_logprobs`` (src/evals/metrics/utils.py:129-131), LOSS and zlib all;
* exact memorization :math:`\frac1n\sum_t [\arg\max p_t = a_t]` and extraction strength
  :math:`1 - k/n`, :math:`k` the start of the shortest greedy-matching suffix, over the same n answer
  tokens without the EOS (open-unlearning src/evals/metrics/memorization.py:177-269, with its rule
  that no matching suffix gives :math:`k = n-1`);
* ``privleak`` on the Min-K% attack in MUSE's convention (see :func:`privleak`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from otu.llm.data import Record
from otu.llm.text import IGNORE, Batch, Encoder


@dataclass
class AnswerScores:
    """Per-answer scores: mean NLL, Min-K% and Min-K%++ statistics, exact memorization and
    extraction strength."""

    nll: np.ndarray
    mink: np.ndarray
    minkpp: np.ndarray
    exact_memorization: np.ndarray
    extraction_strength: np.ndarray


@torch.no_grad()
def score_answers(
    model: nn.Module,
    encoder: Encoder,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int,
    k: float,
) -> AnswerScores:
    batches = (
        encoder.batch(questions[start : start + batch_size], answers[start : start + batch_size])
        for start in range(0, len(questions), batch_size)
    )
    return _scores(model, batches, k, with_eos=True)


def score_texts(model: nn.Module, encoder: Encoder, texts: Sequence[str], batch_size: int, k: float) -> AnswerScores:
    """:func:`score_answers` of raw-text passages (:meth:`Encoder.text`): every token after the
    first scored, Min-K% over all of them (muse_bench metrics/privleak.py:13-28, 42-46: no EOS)."""
    batches = (encoder.texts(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size))
    return _scores(model, batches, k, with_eos=False)


@torch.no_grad()
def _scores(model: nn.Module, batches: Iterable[Batch], k: float, with_eos: bool) -> AnswerScores:
    """Per-sequence scores; ``with_eos``: the last label is the EOS, left out of all but the NLL."""
    device = next(model.parameters()).device
    end = -1 if with_eos else None
    nll, mink, minkpp, em, es = [], [], [], [], []
    for batch in batches:
        batch = batch.to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        targets = batch.labels[:, 1:]
        mask = targets != IGNORE
        logp, z = token_log_probs(logits, targets)
        hits = logits.argmax(-1) == targets
        for i in range(len(batch)):
            lp, zz = logp[i][mask[i]], z[i][mask[i]]
            nll.append(-lp.mean().item())
            mink.append(_lowest_mean(lp[:end], k))  # without the EOS (open-unlearning)
            minkpp.append(_lowest_mean(zz[:end], k))
            greedy = hits[i][mask[i]][:end]
            em.append(greedy.float().mean().item() if greedy.numel() else float("nan"))
            es.append(extraction_strength(greedy))
    return AnswerScores(np.array(nll), np.array(mink), np.array(minkpp), np.array(em), np.array(es))


def extraction_strength(hits: Tensor) -> float:
    """:math:`1 - k/n` for per-token greedy hits of n answer tokens, :math:`k` the first index whose
    suffix ``hits[k:]`` is all hits; with none, open-unlearning's loop leaves :math:`k = n-1`
    (memorization.py:237-253), and an empty answer scores 0 (ibid. 242-251)."""
    n = hits.numel()
    if n == 0:
        return 0.0
    suffix = int(torch.cumprod(hits.flip(0).int(), 0).sum().item())  # length of the all-hit suffix
    k = n - suffix if suffix else n - 1
    return 1.0 - k / n


def token_log_probs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Target log-probs :math:`\\log p_t` and Min-K%++'s :math:`(\\log p_t - \\mu_t)/\\sigma_t`, with
    :math:`\\mu_t, \\sigma_t^2` the mean and variance of log p under the next-token distribution and
    :math:`\\sigma_t^2` clamped at 1e-6 (open-unlearning's ``MinKPlusPlusAttack``)."""
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    probs = logp_all.exp()
    mu = (probs * logp_all).sum(-1)
    variance = ((probs * logp_all.square()).sum(-1) - mu.square()).clamp(min=1e-6)
    return logp, (logp - mu) / variance.sqrt()


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    """Mean of the ``max(1, int(k·n))`` lowest of ``n`` values (Shi et al.; open-unlearning); 0 for no
    values (open-unlearning's min_k.py:22-23)."""
    if values.numel() == 0:
        return 0.0
    count = max(1, int(k * values.numel()))
    return torch.sort(values).values[:count].mean().item()


@torch.no_grad()
def generate(
    model: nn.Module,
    encoder: Encoder,
    questions: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy generations (left-padded batches) of at most ``max_new_tokens``, each stopped at the
    tokenizer's or the model's generation-config EOS, decoded without special tokens."""
    prompts = [encoder.prompt_ids(q)[-encoder.max_length :] for q in questions]
    tok = encoder.tokenizer
    new = greedy_ids(model, encoder, prompts, batch_size, max_new_tokens)
    return [text.strip() for text in tok.batch_decode(new, skip_special_tokens=True)]


@torch.no_grad()
def greedy_ids(
    model: nn.Module, encoder: Encoder, prompts: Sequence[list[int]], batch_size: int, max_new_tokens: int
) -> list[list[int]]:
    """The new token ids of greedy generations from token-id prompts (left-padded batches), each
    stopped at the tokenizer's or the model's generation-config EOS."""
    device = next(model.parameters()).device
    tok = encoder.tokenizer
    out: list[list[int]] = []
    eos = {tok.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(config_eos if isinstance(config_eos, list) else [config_eos]) - {None}
    for start in range(0, len(prompts), batch_size):
        ids, mask = encoder.left_padded(prompts[start : start + batch_size])
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=encoder.pad_id,
            eos_token_id=sorted(eos),
        )
        out += gen[:, ids.shape[1] :].tolist()
    return out


def rouge_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array(
        [scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references, strict=True)]
    )


@dataclass
class OptionScores:
    """Per item: mean NLL of the paraphrased answer and of each perturbed (false) answer."""

    paraphrased: np.ndarray
    perturbed: list[np.ndarray]

    def truth_ratios(self) -> np.ndarray:
        """:math:`R = \\exp(\\ell(\\text{paraphrased}) - \\text{mean}_j\\,\\ell(\\text{perturbed}_j))`."""
        return np.exp(self.paraphrased - np.array([p.mean() for p in self.perturbed]))


def option_scores(model: nn.Module, encoder: Encoder, records: Sequence[Record], batch_size: int) -> OptionScores:
    """Mean answer NLLs of every record's paraphrased and perturbed answers."""
    questions = [r.question for r in records]
    para = score_answers(model, encoder, questions, [r.paraphrased_answer for r in records], batch_size, 1.0).nll
    flat_q = [r.question for r in records for _ in r.perturbed_answer]
    flat_a = [a for r in records for a in r.perturbed_answer]
    pert = score_answers(model, encoder, flat_q, flat_a, batch_size, 1.0).nll
    offsets = np.cumsum([0] + [len(r.perturbed_answer) for r in records])
    return OptionScores(para, [pert[offsets[i] : offsets[i + 1]] for i in range(len(records))])


def normalised_probability(nll: np.ndarray, wrong_nll: Sequence[np.ndarray]) -> np.ndarray:
    """Per item :math:`p/(p + \\sum_j \\tilde p_j)` with :math:`p = e^{-\\ell(a)}`, :math:`\\tilde p_j =
    e^{-\\ell(\\tilde a_j)}` (per-token geometric means): TOFU's world-fact / real-author probability,
    open-unlearning's ``probability_w_options``."""
    p = np.exp(-np.asarray(nll, dtype=float))
    return p / (p + np.array([np.exp(-w).sum() for w in wrong_nll]))


def harmonic_mean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=float)
    if np.any(array <= 0):
        return 0.0
    return float(len(array) / np.sum(1.0 / array))


def privleak(auc: float, auc_retain: float) -> float:
    """MUSE's PrivLeak (open-unlearning's ``privleak``), in percent.

    MUSE scores the AUC with forget items as the *less* member-like class, i.e. :math:`1 - AUC` in
    the conventional orientation of :func:`mia_auc`; so
    :math:`((1-AUC_u) - (1-AUC_r)) / (1-AUC_r) \\cdot 100`: about −100 for a model that still
    memorises the forget set (AUC_u ≈ 1, AUC_r ≈ 0.5), 0 at the retain-only model, > 0 when
    unlearning over-shoots. The denominator gets open-unlearning's 1e-10.
    """
    score, ref = 1.0 - auc, 1.0 - auc_retain
    return (score - ref) / (ref + 1e-10) * 100.0


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
