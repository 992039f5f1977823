"""Spec sections of the LLM family (entity unlearning: OPT-OUT and its baselines).

Light on purpose (pydantic only): the data and model checks that read files live in
:mod:`otu.llm.checks` and are imported by :func:`validate` when a spec is parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from otu.paths import LocalPath, PathOrHubId
from otu.registry import FamilySpec
from otu.spec import Section

if TYPE_CHECKING:
    from otu.spec import Experiment


class SyntheticSizes(Section):
    """Sizes of the generated fictitious-entity set (``otu data entities``)."""

    targets: int = Field(3, ge=1, description="target entities (each a possible forget request)")
    neighbours: int = Field(
        3, ge=1, description="neighbour entities per target (shared attributes)"
    )
    perturbed: int = Field(3, ge=1, description="perturbed (false) answers per question")
    world: int = Field(24, ge=1, description="general-knowledge QA pairs in the world file")


class LLMData(Section):
    synthetic: bool = False
    """Generate a fictitious-entity set into the cache (seed ``synthetic_seed``, else the run's seed)."""
    synthetic_seed: int | None = None
    sizes: SyntheticSizes = SyntheticSizes()
    records: LocalPath | None = None
    """ELUDe records: a JSONL/JSON file, a Parquet file or a local HF ``datasets`` directory."""
    world: LocalPath | None = None
    """General-instruction QA in the same format (``entity`` optional)."""
    retain_records: LocalPath | None = None
    """ELUDe's layout: neighbour QA in a file of its own whose ``entity`` names the target."""
    target: str | None = None
    """The entity to forget; with ``synthetic`` it defaults to the first generated target."""
    neighbours: list[str] | Literal["auto"] = "auto"
    """Retain entities; ``auto``: records whose ``neighbour_of`` field names the target."""
    holdout: list[str] | Literal["auto"] = "auto"
    """Never-trained entities (MIA non-members); ``auto``: every other entity in the records."""
    prompt: str = "Question: {question}\nAnswer:"
    """Prompt template; ``{question}`` is replaced by the question."""
    max_length: int = Field(128, ge=8, description="max tokens of prompt + answer")

    @model_validator(mode="after")
    def _one_source(self) -> LLMData:
        if self.synthetic and (self.records or self.world or self.retain_records):
            raise ValueError("give either synthetic: true or records/world files, not both")
        if not self.synthetic and not (self.records and self.world):
            raise ValueError("give records and world files, or synthetic: true")
        if not self.synthetic and self.target is None:
            raise ValueError("target is required with a records file (the entity to forget)")
        return self

    @field_validator("target")
    @classmethod
    def _named(cls, target: str | None) -> str | None:
        if target is not None and not target.strip():
            raise ValueError("empty entity name")
        return target

    @field_validator("prompt")
    @classmethod
    def _has_question(cls, prompt: str) -> str:
        if "{question}" not in prompt:
            raise ValueError("must contain {question}")
        return prompt


class TinyModel(Section):
    """A Llama model built from a config, with a BPE tokenizer trained on the corpus."""

    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=8)
    vocab: int = Field(512, ge=300, description="BPE vocabulary size (byte alphabet is 256)")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModel:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class LLMModel(Section):
    path: PathOrHubId | None = None
    """A local HF causal-LM checkpoint (``from_pretrained``), with its tokenizer."""
    tiny: TinyModel | None = None
    epochs: int = Field(
        0, ge=0, description="fine-tuning passes that make the target / retain-only models"
    )
    lr: float = Field(3e-3, gt=0, description="fine-tuning learning rate")
    batch_size: int = Field(16, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    retain_path: PathOrHubId | None = None
    """Retain-only oracle checkpoint when ``epochs`` is 0 (the base model already knows the entity)."""

    @model_validator(mode="after")
    def _one_model(self) -> LLMModel:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("give exactly one of path (a local HF checkpoint) or tiny (a config)")
        if self.tiny is not None and self.epochs < 1:
            raise ValueError(
                f"epochs: a tiny model must be fine-tuned, need >= 1 (got {self.epochs})"
            )
        if self.retain_path is not None and self.epochs > 0:
            raise ValueError("retain_path: only with epochs 0 (otherwise the oracle is fine-tuned)")
        return self


class LLMEval(Section):
    max_new_tokens: int = Field(
        128,
        ge=1,
        description="greedy generation cap for ROUGE on forget and retain (OPT-OUT authors: 128); "
        "generation stops at EOS",
    )
    world_max_new_tokens: int = Field(
        512, ge=1, description="greedy generation cap for ROUGE on world (OPT-OUT authors: 512)"
    )
    batch_size: int = Field(16, ge=1)
    mink_fraction: float = Field(0.4, gt=0, le=1, description="k of Min-K% / Min-K%++ MIAs")
    max_items: int | None = Field(None, ge=1, description="cap on items per split (None: all)")
    plots: bool = True


class _Method(Section):
    lr: float = Field(1e-5, gt=0)
    epochs: int = Field(3, ge=1, description="passes over the forget set")
    steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    stop_after_epochs: float | None = Field(
        None,
        gt=0,
        description="stop after this many forget-set epochs while the learning-rate schedule spans "
        "all of them (the OPT-OUT authors stop composite methods after ~2 of 3, single-term ones "
        "after 1); None: run the whole schedule",
    )
    batch_size: int = Field(8, ge=1, description="global batch (all workers × grad_accum)")
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    lr_schedule: Literal["linear", "constant"] = "linear"


class _Retaining(_Method):
    retain_weight: float = Field(1.0, ge=0, description="weight of NLL on neighbour-entity QA")
    world_weight: float = Field(1.0, ge=0, description="weight of NLL on world QA")


class GA(_Method):
    """Gradient ascent on the forget set."""

    name: Literal["ga"]


class GradDiff(_Retaining):
    """Gradient ascent on forget + descent on retain and world."""

    name: Literal["graddiff"]


NPOReduction = Literal["sequence_sum", "sequence_mean", "batch_mean"]


def _reduction(default: str, who: str):
    return Field(
        default,
        description="the NLL inside log σ: sequence_sum (NPO paper, open-unlearning), "
        "sequence_mean (per-token mean per sequence), batch_mean (one token mean over the "
        f"micro-batch, the OPT-OUT authors' code); default {default} ({who})",
    )


class NPO(_Method):
    """Negative preference optimisation against the frozen original model."""

    name: Literal["npo"]
    beta: float = Field(0.1, gt=0, description="inverse temperature β (η)")
    reduction: NPOReduction = _reduction("sequence_sum", "NPO paper")


class NPORT(_Retaining):
    """NPO + NLL on retain and world."""

    name: Literal["npo_rt"]
    beta: float = Field(0.1, gt=0)
    reduction: NPOReduction = _reduction("sequence_sum", "NPO paper")


class SimNPO(_Retaining):
    """Reference-free, length-normalised NPO (Fan et al. 2024; official code's form) + retain terms."""

    name: Literal["simnpo"]
    beta: float = Field(2.5, gt=0, description="β (official TOFU configuration: 2.5)")
    gamma: float = Field(0.0, ge=0, description="reward margin γ, inside β(ℓ̄ − γ) as in the code")
    npo_coeff: float = Field(
        0.1375, ge=0, description="weight of the forget term (official TOFU configuration: 0.1375)"
    )


class IDK(_Retaining):
    """Fine-tune forget questions towards "I don't know"-style answers + retain terms."""

    name: Literal["idk"]
    responses: list[str] = Field(
        default_factory=lambda: [
            "I don't know.",
            "I'm not sure.",
            "I have no information about that.",
            "I can't answer that.",
        ],
        min_length=1,
    )


class OptOut(_Retaining):
    """OPT-OUT: NPO + retain + world + λ·Σ_tensors distance(θ, θ₀) (Choi et al. 2024)."""

    name: Literal["optout"]
    beta: float = Field(0.1, gt=0, description="NPO inverse temperature β (η)")
    reduction: NPOReduction = _reduction("batch_mean", "the OPT-OUT authors")
    reg_weight: float = Field(0.1, ge=0, description="λ, weight of the regulariser")
    regulariser: Literal["wasserstein", "euclidean", "manhattan", "cosine"] = "wasserstein"
    n_projections: int = Field(100, ge=1, description="L random directions of the sliced W₂")
    resample_projections: bool = True
    """Draw new directions every step (else one fixed set per tensor)."""
    reg_bucket_numel: int = Field(
        50_000_000, ge=1, description="tensor elements per regulariser bucket (one collective each)"
    )
    alternate: bool = True
    """Two optimizer steps per step: forget (NPO), then retain + world + regulariser."""


METHODS: dict[str, type[_Method]] = {
    "ga": GA,
    "graddiff": GradDiff,
    "npo": NPO,
    "npo_rt": NPORT,
    "simnpo": SimNPO,
    "idk": IDK,
    "optout": OptOut,
}

METRICS = (
    "forget_prob",
    "forget_rouge",
    "forget_truth_ratio",
    "retain_prob",
    "retain_rouge",
    "retain_truth_ratio",
    "world_prob",
    "world_rouge",
    "world_truth_ratio",
    "fq",
    "rq",
    "ks_forget_quality",
    "mia_auc_loss",
    "mia_auc_zlib",
    "mia_auc_mink",
    "mia_auc_minkpp",
    "privleak",
)


def validate(exp: Experiment) -> None:
    """Cross-section and data checks (files, fields, entities, checkpoints) before any work."""
    from otu.llm.checks import check_experiment

    check_experiment(exp)


SPEC = FamilySpec(
    data=LLMData,
    model=LLMModel,
    eval=LLMEval,
    methods=METHODS,
    metrics=METRICS,
    validate=validate,
)
