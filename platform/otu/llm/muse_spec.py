"""Spec sections of the MUSE layout (``task.data.layout: muse``, ``task.data.muse``, ``eval.muse``).

Pydantic only. Defaults are muse-bench's own (swj0419/muse_bench eval.py, metrics/*.py) and
open-unlearning's MUSE recipe (configs/experiment/unlearn/muse/default.yaml, configs/eval/muse*).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from otu.sections import Section

MUSE_METRICS = (
    "verbmem_f",
    "knowmem_f",
    "knowmem_r",
    "privleak",
    "n_verbmem",
    "n_knowmem_forget",
    "n_knowmem_retain",
    "n_privleak_forget",
    "n_privleak_holdout",
)
"""What a MUSE evaluation reports besides the forget-vs-holdout ``mia_auc_*``."""
MUSE_MIA_METRICS = ("mia_auc_loss", "mia_auc_zlib", "mia_auc_mink", "mia_auc_minkpp")
"""The forget-vs-holdout MIAs a MUSE evaluation reports (on the privleak texts)."""


class MuseSizes(Section):
    """Sizes of the generated tiny MUSE-shaped corpus (:func:`otu.llm.synthetic.generate_muse`)."""

    documents: int = Field(4, ge=2, description="articles in each raw split (forget, retain1, retain2, holdout)")
    facts: int = Field(
        3,
        ge=2,
        description="question/answer facts per article (knowmem; one per forget / retain article is an ICL example)",
    )
    folds: int = Field(4, ge=1, description="sust / scal folds forget_1..N over the forget articles")


class Muse(Section):
    """Where MUSE's subsets come from (muse-bench/MUSE-News / MUSE-Books dataset cards): ``raw``
    (forget, retain1, retain2, holdout), ``verbmem`` (forget), ``knowmem`` (forget_qa, retain_qa and
    their ``_icl`` examples), ``privleak`` (forget, retain, holdout), ``scal`` / ``sust`` (forget_1..4)."""

    forget_subset: Literal["raw", "sust", "scal"] = Field(
        "raw", description="subset of the forget text: raw (the whole forget set), sust or scal (a fold)"
    )
    forget: str = Field("forget", description="its split: forget (raw), or forget_1..4 (sust / scal)")
    retain: str = Field("retain1", description="raw split of the retain term (open-unlearning's MUSE recipe: retain1)")
    oracle: list[str] = Field(
        ["retain1", "retain2"],
        min_length=1,
        description="raw splits the tiny retain-only oracle is fine-tuned on (the target: these and forget); "
        "MUSE's retrained models are trained on retain1 + retain2",
    )
    sizes: MuseSizes = MuseSizes()


class MuseEval(Section):
    """MUSE's criteria as muse_bench computes them (eval.py, metrics/verbmem.py, knowmem.py,
    privleak.py, logger.py); ROUGE numbers in muse_bench's percent."""

    verbmem_max_new_tokens: int = Field(
        128, ge=1, description="greedy continuation length of verbmem prompts; the reference is cut to it (eval.py:20)"
    )
    knowmem_max_new_tokens: int = Field(32, ge=1, description="greedy answer length of knowmem questions (eval.py:22)")
    knowmem_stopwords: list[str] = Field(
        ["\n\n", "\nQuestion", "Question:"],
        description="an answer is cut before the first of these (metrics/knowmem.py:50)",
    )
    rouge_stemmer: bool = Field(
        False, description="Porter stemmer in ROUGE-L (muse_bench: off, metrics/logger.py:10-13)"
    )
    privleak_attack: Literal["mink", "minkpp", "loss", "zlib"] = Field(
        "mink",
        description="MIA of privleak: mink, Min-K% at eval.mink_fraction (muse_bench's forget_holdout_Min-40%, "
        "eval.py:18; open-unlearning's mia_min_k k 0.4), or minkpp / loss / zlib",
    )
    privleak_retrain_auc: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="the retrained model's published forget-vs-holdout AUC in MUSE's orientation (muse_bench "
        "constants.py AUC_RETRAIN: News 0.4772, Books 0.5393 for Min-40%); None: the task's retrained model's",
    )
