"""Spec building blocks every family and the platform share: the strict :class:`Section` base and
the platform's own sections (``tracking``, ``compute``, ``dynamics``). Pydantic only: a family's
spec module imports this, never :mod:`otu.spec`, so parsing a spec imports no family code."""

from __future__ import annotations

import reprlib
from typing import Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

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
