"""Spec building blocks every family and the platform share: the strict :class:`Section` base and
the platform's own sections (``tracking``, ``compute``, ``dynamics``). Pydantic only: a family's
spec module imports this, never :mod:`otu.spec`, so parsing a spec imports no family code."""

from __future__ import annotations

import reprlib
from typing import Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from otu.errors import SpecError
from otu.paths import LocalPath

MAX_INT = 2**63 - 1
"""Integers beyond int64 are what numpy and torch cannot take."""
MAX_SEED = 2**32 - 1
"""numpy's ``default_rng``/``RandomState`` and torch take seeds in 0..2³²−1."""


class Section(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored; floats are finite
    (``inf``/``nan`` rejected) and integers fit in int64. A field's documentation is its
    ``Field(description=...)`` (an attribute docstring below a field becomes that description too);
    ``otu spec`` and docs/spec-reference.md print it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    @field_validator("*", mode="after")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        if is_int(value) and abs(value) > MAX_INT:
            raise ValueError(f"integer out of range: |value| must be < 2**63 (got {excerpt(value)})")
        return value


class MethodSpec(Section):
    """Base of every method section: ``name`` selects the row of the family's method table
    (subclasses narrow it to ``Literal["<name>"]``)."""

    name: str


class Tracking(Section):
    """Where results go: MLflow and the cache of prepared data and reference models."""

    experiment: str = Field("otu", description="MLflow experiment name")
    uri: str | None = Field(
        None, description="MLflow tracking URI; the CLI's --tracking-uri and MLFLOW_TRACKING_URI take precedence"
    )
    cache_dir: LocalPath = Field(
        "otu-runs/cache", description="where prepared data and original/oracle models are cached by content hash"
    )


class Zero3(Section):
    """DeepSpeed ZeRO-3 knobs (``stage3_*``); the defaults are DeepSpeed's. Small models need lower
    limits to be partitioned at all (below ~1e9 parameters everything stays gathered)."""

    max_live_parameters: int = Field(1_000_000_000, ge=0, description="parameters kept gathered per rank")
    prefetch_bucket_size: int = Field(50_000_000, ge=0, description="parameters fetched ahead of use")
    reduce_bucket_size: int = Field(500_000_000, ge=1, description="elements per gradient reduction")
    max_reuse_distance: int = Field(
        1_000_000_000, ge=0, description="keep a parameter gathered if it is used again within this many parameters"
    )
    param_persistence_threshold: int = Field(
        100_000, ge=0, description="tensors smaller than this stay whole on every rank"
    )


class Compute(Section):
    """Devices, processes and the DeepSpeed engine of the unlearning loop."""

    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="auto: cuda when available")
    threads: int = Field(1, ge=1, description="torch intra-op threads per process")
    workers: int = Field(1, ge=1, description="data-parallel workers (Ray Train / DeepSpeed ranks)")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage")
    offload: Literal["none", "optimizer", "params"] = Field("none", description="ZeRO offload to CPU")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="training precision")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward")
    zero3: Zero3 = Zero3()
    checkpoint_every: int | None = Field(
        None,
        ge=0,
        description="save the loop's full state (model, optimizer, scheduler, data streams, RNG) every this many "
        "steps, for restarts and `otu run --resume` (None: every tenth of the run; 0: never)",
    )
    max_failures: int = Field(
        3, ge=-1, description="restarts of failed Ray Train workers from the latest loop checkpoint (-1: unlimited)"
    )


class Dynamics(Section):
    """Checkpoint evaluation during unlearning, on a pool of evaluation actors."""

    every: int = Field(0, ge=0, description="evaluate a checkpoint every this many steps (0: off)")
    select: str | None = Field(
        None, description="metric by which to select the best checkpoint (its metrics become `unlearned`)"
    )
    mode: Literal["max", "min"] = Field("max", description="whether select maximises or minimises")
    pool_size: int = Field(2, ge=1, description="evaluation actors")
    actor_cpus: float = Field(0.0, ge=0, description="CPUs reserved per actor (0: share the trials')")
    attacks: bool = Field(
        False,
        description="attack every checkpoint with eval.robustness's attacks too: rows gain <metric>@<label> "
        "(select may name one: the checkpoint that forgets robustly)",
    )


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40


def excerpt(value: Any, limit: int = 80) -> str:
    """A short repr of a user's value: bounded work and length however large the value is."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unique_labels(attacks: list) -> list:
    """``eval.robustness``'s attacks, when no two share a row label (``attack.label``)."""
    labels = [a.label for a in attacks]
    twice = [label for label in dict.fromkeys(labels) if labels.count(label) > 1]
    if twice:
        raise ValueError(f"two attacks are labelled {twice[0]!r}: give one a name")
    return attacks


UniqueLabels = AfterValidator(unique_labels)
"""Marks a family's ``eval.robustness`` list: ``Annotated[list[Attack], UniqueLabels]``."""


class AttackSection(Section):
    """One ``eval.robustness`` attack; its rows in metrics.json are ``<model>@<label>``."""

    attack: str
    """The attack's kind (each subclass a ``Literal``: the discriminator of the family's list)."""
    name: str | None = Field(
        None, description="row label (default: the attack's kind; quantize: int<bits>; probe: a built-in template)"
    )

    def default_label(self) -> str:
        return self.attack

    @property
    def label(self) -> str:
        return self.name or self.default_label()


# ---------------------------------------------------------------- eval.membership (classifier families)

MEMBERSHIP_METRICS: dict[str, tuple[str, ...]] = {
    "population": (),
    "ulira": ("ulira_auc", "ulira_tpr_at_1fpr", "ulira_tpr_at_0_1fpr"),
    "challenge": ("challenge_epsilon", "challenge_forget_quality", "challenge_score"),
}
"""The metric names each ``eval.membership.attack`` adds to every model's row (otu.classifiers.membership)."""
MIN_ULIRA_FORGET = 4
"""Forget examples U-LiRA needs (each half holds half of them; a method needs a batch of two)."""


class MembershipAttack(Section):
    """Per-example membership inference with shadow models, trained as Ray tasks and cached
    (docs/metrics.md): ``ulira`` — U-LiRA (Hayes et al. 2024, arXiv 2403.01218): shadow originals on
    random halves of the training set, each unlearned with the method on the forget examples it holds;
    ``challenge`` — the NeurIPS 2023 unlearning challenge score from N unlearned and N retrained models;
    ``population`` — only the population numbers every run reports (no shadows). The ``eval.membership``
    section of the classifier families (vision; tabular data-point unlearning)."""

    attack: Literal["population", "ulira", "challenge"] = "population"
    """``population``: no shadows (the population numbers every run reports only: vision's loss-based MIA,
    tabular's ``mi``); ``ulira``: U-LiRA AUC and TPR at 1 % / 0.1 % FPR;
    ``challenge``: per-example ε, forgetting quality F and the challenge's final score."""
    shadow_models: int = Field(
        16,
        ge=1,
        description="ulira: shadow originals (an even number ≥ 6: complementary halves, three that never saw "
        "each example); challenge: N unlearned and N retrained models each (≥ 3), plus N retrained for the "
        "oracle's row",
    )
    seed: int = Field(0, description="seed of the halves and of the shadows' training")
    parallel: int | None = Field(
        None, ge=1, description="shadows trained at once at most (None: as many as Ray's free CPUs allow)"
    )

    @model_validator(mode="after")
    def _enough_shadows(self) -> MembershipAttack:
        n = self.shadow_models
        if self.attack == "ulira" and (n < 6 or n % 2):
            raise ValueError(
                f"shadow_models: U-LiRA trains complementary halves in pairs and fits each example's "
                f"'retrained' Gaussian without the shadow it scores: give an even number ≥ 6 (got {n})"
            )
        if self.attack == "challenge" and n < 3:
            raise ValueError(
                f"shadow_models: the challenge's ε histogram has no bucket below ⌈log(N − 1)⌉ = 0 for N < 3 (got {n})"
            )
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        return MEMBERSHIP_METRICS[self.attack]

    def check_forget_size(self, forget: int, noun: str) -> None:
        """U-LiRA's halves each need forget examples (``noun``) to unlearn: a SpecError for fewer than
        :data:`MIN_ULIRA_FORGET` (the family's checks call it once it knows the forget set's size)."""
        if self.attack == "ulira" and forget < MIN_ULIRA_FORGET:
            raise SpecError(
                f"eval.membership.attack: U-LiRA's shadows each unlearn half of the forget {noun}; "
                f"{forget} forget {noun} leave halves with too few: give at least {MIN_ULIRA_FORGET}"
            )
