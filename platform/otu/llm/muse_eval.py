r"""MUSE's criteria as muse_bench computes them (swj0419/muse_bench), under its names:

* ``verbmem_f`` (eval.py:53-65, metrics/verbmem.py): per verbmem item, the greedy continuation of
  ``tokenizer(prompt)`` (BOS included) of ``verbmem_max_new_tokens`` tokens against the reference
  ``gt`` cut to its first ``verbmem_max_new_tokens`` tokens *counting the BOS* (verbmem.py:22), both
  decoded without special tokens; ROUGE-L F1, mean × 100.
* ``knowmem_f`` / ``knowmem_r`` (eval.py:80-112, metrics/knowmem.py): the ICL prompt
  :math:`\sum_j` ``"Question: {q_j}\nAnswer: {a_j}\n\n"`` over the ``*_icl`` examples, then
  ``"Question: {q}\nAnswer: "``; the greedy answer of ``knowmem_max_new_tokens`` tokens cut before
  the first of ``"\n\n"``, ``"\nQuestion"``, ``"Question:"`` (knowmem.py:50); ROUGE-L F1 against the
  answer, mean × 100 (the ``mean_rougeL`` key, eval.py:21, logger.py:17-29: fmeasure).
* ``privleak`` (eval.py:67-78, metrics/privleak.py): Min-40% of the privleak forget vs holdout texts
  (every token after the BOS), AUC with the forget texts as the non-member class, relative to the
  retrained model's: :math:`(AUC - AUC_{retrain}) / AUC_{retrain} \cdot 100` — otu's
  :func:`otu.llm.metrics.privleak` on the conventional AUC. ``privleak_retrain_auc`` takes
  muse_bench's published AUC_RETRAIN (constants.py) instead of the task's retrained model.

ROUGE is rouge-score's ``rougeL`` without stemming (logger.py:10-13). Generations are greedy and
batched (left-padded; muse_bench generates one prompt at a time), decoded with
``clean_up_tokenization_spaces=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from otu.llm.data import Record, Splits
from otu.llm.metrics import greedy_ids, mia_auc, mia_scores, privleak, score_texts
from otu.llm.muse_spec import MuseEval
from otu.llm.spec import LLMEval
from otu.llm.text import Encoder

MIA_SPLITS = ("forget", "holdout")


@dataclass
class Completion:
    """One generated item: its prompt, reference, generation and ROUGE-L F1."""

    prompt: str
    reference: str
    generation: str
    rouge: float


@dataclass
class MuseStats:
    """Per-item numbers of one model: the criteria's completions and the MIA scores of the
    privleak forget / holdout texts (``{split: {attack: scores}}``)."""

    verbmem: list[Completion]
    knowmem: dict[str, list[Completion]]
    mia: dict[str, dict[str, np.ndarray]]


def muse_stats(model: nn.Module, encoder: Encoder, splits: Splits, spec: LLMEval) -> MuseStats:
    muse, bs = spec.muse, spec.batch_size
    verbmem = verbmem_completions(model, encoder, splits["verbmem"], muse, bs)
    knowmem = {
        part: knowmem_completions(model, encoder, splits[f"knowmem_{part}"], splits[f"knowmem_{part}_icl"], muse, bs)
        for part in ("forget", "retain")
    }
    mia = {}
    for part, split in zip(MIA_SPLITS, ("forget_eval", "holdout"), strict=True):
        texts = [r.answer for r in splits[split]]
        mia[part] = mia_scores(score_texts(model, encoder, texts, bs, spec.mink_fraction), texts)
    return MuseStats(verbmem, knowmem, mia)


def muse_metrics(stats: MuseStats, oracle: MuseStats | None, spec: MuseEval) -> dict[str, float]:
    """``verbmem_f``, ``knowmem_f``, ``knowmem_r`` (percent), ``privleak`` (NaN without a retrained
    model or a published AUC), the forget-vs-holdout ``mia_auc_*`` and the item counts."""
    out = {
        "verbmem_f": _percent(stats.verbmem),
        "knowmem_f": _percent(stats.knowmem["forget"]),
        "knowmem_r": _percent(stats.knowmem["retain"]),
    }
    aucs = {a: mia_auc(stats.mia["forget"][a], stats.mia["holdout"][a]) for a in stats.mia["forget"]}
    out |= {f"mia_auc_{a}": auc for a, auc in aucs.items()}
    attack = spec.privleak_attack
    if spec.privleak_retrain_auc is not None:
        base: float | None = 1.0 - spec.privleak_retrain_auc  # published in MUSE's orientation
    elif oracle is not None:
        base = mia_auc(oracle.mia["forget"][attack], oracle.mia["holdout"][attack])
    else:
        base = None
    out["privleak"] = privleak(aucs[attack], base) if base is not None else math.nan
    out["n_verbmem"] = float(len(stats.verbmem))
    out["n_knowmem_forget"] = float(len(stats.knowmem["forget"]))
    out["n_knowmem_retain"] = float(len(stats.knowmem["retain"]))
    out["n_privleak_forget"] = float(len(stats.mia["forget"][attack]))
    out["n_privleak_holdout"] = float(len(stats.mia["holdout"][attack]))
    return out


def _percent(items: Sequence[Completion]) -> float:
    return float(np.mean([c.rouge for c in items]) * 100) if items else math.nan


def verbmem_completions(
    model: nn.Module, encoder: Encoder, items: Sequence[Record], spec: MuseEval, batch_size: int
) -> list[Completion]:
    """Greedy continuations of the verbmem prompts against their cut references (verbmem.py:13-39)."""
    tok, n = encoder.tokenizer, spec.verbmem_max_new_tokens
    references = [_decode(tok, tok(r.answer, add_special_tokens=True)["input_ids"][:n]) for r in items]
    prompts = [r.question for r in items]
    return _complete(model, encoder, prompts, references, n, batch_size, spec.rouge_stemmer)


def knowmem_prompt(question: str, icl: Sequence[Record]) -> str:
    """muse_bench's few-shot QA prompt (knowmem.py:22-29)."""
    shots = "".join(f"Question: {r.question}\nAnswer: {r.answer}\n\n" for r in icl)
    return shots + f"Question: {question}\nAnswer: "


def cut_at_stopwords(text: str, stopwords: Sequence[str]) -> str:
    """``text`` before the first occurrence of each stopword in turn (knowmem.py:7-9)."""
    for word in stopwords:
        text = text.split(word)[0]
    return text


def knowmem_completions(
    model: nn.Module,
    encoder: Encoder,
    items: Sequence[Record],
    icl: Sequence[Record],
    spec: MuseEval,
    batch_size: int,
) -> list[Completion]:
    prompts = [knowmem_prompt(r.question, icl) for r in items]
    out = _complete(
        model,
        encoder,
        prompts,
        [r.answer for r in items],
        spec.knowmem_max_new_tokens,
        batch_size,
        spec.rouge_stemmer,
        spec.knowmem_stopwords,
    )
    return out


def _complete(
    model: nn.Module,
    encoder: Encoder,
    prompts: Sequence[str],
    references: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    stemmer: bool,
    stopwords: Sequence[str] = (),
) -> list[Completion]:
    if not prompts:
        return []
    tok = encoder.tokenizer
    ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    generations = [
        cut_at_stopwords(_decode(tok, g), stopwords)
        for g in greedy_ids(model, encoder, ids, batch_size, max_new_tokens)
    ]
    scores = rouge_l_f1(generations, references, stemmer)
    return [Completion(*row) for row in zip(prompts, references, generations, scores, strict=True)]


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], stemmer: bool = False) -> list[float]:
    """rouge-score's ROUGE-L F1 of each prediction against its reference (logger.py:17-29)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]


def generation_rows(stats: MuseStats) -> list[dict]:
    """One row per generated item: criterion, prompt, reference, generation and its ROUGE-L F1."""
    groups = {"verbmem": stats.verbmem} | {f"knowmem_{k}": v for k, v in stats.knowmem.items()}
    return [
        {"split": name, "question": c.prompt, "reference": c.reference, "generation": c.generation, "rouge": c.rouge}
        for name, items in groups.items()
        for c in items
    ]
