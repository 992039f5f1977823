"""Spec sections of the vision family (classifier instance unlearning: DLFD and baselines).

Method defaults are those of the DLFD authors' age experiment (Choi & Na 2024, public code,
age_cls_experiments.ipynb): SGD with momentum 0.9 and weight decay 5e-4, M = 15 perturbation steps of
α = 0.4, OT weight 3, λ from 0 to 1, Sinkhorn on logits with cosine cost and ε = 0.01; under the
default ``protocol: paper`` the MIA is monitored on ≤ 300 samples per set.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from otu.family import FamilySpec, Job, Method
from otu.paths import LocalPath
from otu.sections import MEMBERSHIP_METRICS as MEMBERSHIP_METRICS  # eval.membership's rows (shared)
from otu.sections import AttackSection, MembershipAttack, MethodSpec, Section, UniqueLabels


class VisionData(Section):
    source: Literal["digits", "file"] = "digits"
    """``digits``: scikit-learn's bundled 8×8 digits; ``file``: a Parquet/NPZ table (``path``)."""
    path: LocalPath | None = None
    image_column: str = "image"
    """Per row an H×W or C×H×W numeric array (integer pixels 0–255 are scaled by 1/255)."""
    label_column: str = "label"
    identity_column: str = "identity"
    split_column: str | None = None
    """File source: a column naming each row's part — ``forget``, ``retain``, ``val`` or ``test`` — in
    place of a forget request and drawn test/val splits (to reuse a published partition; the identity
    column is then not read)."""
    normalize_mean: list[float] | None = None
    """Per-channel mean m of x ← (x − m)/s after the scaling to [0, 1] (torchvision's ``Normalize``;
    one value or one per channel), e.g. ImageNet's [0.485, 0.456, 0.406]; with ``normalize_std``."""
    normalize_std: list[float] | None = None
    """Per-channel s of the normalisation, e.g. ImageNet's [0.229, 0.224, 0.225]."""
    forget_size: int | None = Field(None, ge=1, description="forget this many random training samples")
    forget_fraction: float | None = Field(None, gt=0, lt=1, description="…or this fraction of them")
    forget_identities: list[str | int] | None = None
    """Forget every sample whose identity column takes one of these values (file source)."""
    test_fraction: float = Field(0.25, gt=0, lt=1, description="test share (of each label; of identities for a file)")
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="validation share, like test_fraction; the only held-out data training "
        "decisions (DLFD's monitor and checkpoint choice) see — test is for the final report",
    )

    @model_validator(mode="after")
    def _one_forget_request(self) -> VisionData:
        given = [k for k in ("forget_size", "forget_fraction", "forget_identities") if getattr(self, k) is not None]
        if self.split_column is not None:
            if self.source != "file":
                raise ValueError("split_column needs source 'file'")
            if given:
                raise ValueError(f"split_column names the forget set: drop {given}")
        elif len(given) > 1:
            raise ValueError(f"give one forget request, not {given}")
        elif not given:
            self.forget_size = 100
        if (self.normalize_mean is None) != (self.normalize_std is None):
            raise ValueError("give normalize_mean and normalize_std together")
        if self.normalize_mean is not None and self.normalize_std is not None:
            if len(self.normalize_mean) != len(self.normalize_std) or not self.normalize_mean:
                raise ValueError("normalize_mean and normalize_std need the same (non-zero) number of values")
            if min(self.normalize_std) <= 0:
                raise ValueError(f"normalize_std must be positive, got {self.normalize_std}")
        if self.forget_identities is not None and not self.forget_identities:
            raise ValueError("forget_identities: give at least one identity")
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs path (a .parquet or .npz file)")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be < 1 (got {self.test_fraction} + {self.val_fraction})"
            )
        if self.forget_identities is not None and self.source != "file":
            raise ValueError("forget_identities needs source 'file' with an identity column")
        return self


class VisionModel(Section):
    """Architecture and the training recipe of the original model and the retain-only oracle."""

    arch: Literal["cnn", "resnet18"] = "cnn"
    width: int | None = Field(None, ge=1, description="first-stage channels (cnn 32, resnet18 64)")
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(64, ge=2)
    weight_decay: float = Field(5e-4, ge=0)


class VisionRelearn(AttackSection):
    """k-shot relearning: a copy fine-tuned (Adam, cross-entropy) on a seeded ``shots`` of the
    forget images; forgetting is then measured on the other forget images."""

    attack: Literal["relearn"]
    shots: int = Field(10, ge=1, description="forget images relearned (a seeded subset)")
    epochs: int = Field(5, ge=1, description="passes over them")
    lr: float = Field(1e-4, gt=0, description="Adam lr (digits: 1e-3 × 20 epochs drops test accuracy 0.98 → 0.65)")
    batch_size: int = Field(8, ge=2)


class VisionEval(Section):
    mia_splits: int = Field(10, ge=2, description="StratifiedShuffleSplit folds of the MIA classifier")
    mia_test_size: float = Field(0.1, gt=0, lt=1, description="held-out share in each MIA split")
    mia_feature: Literal["loss", "log_loss"] = "loss"
    """Attack input: the cross-entropy loss (the unlearning-challenge kit DLFD uses) or its log."""
    mia_protocol: Literal["balanced", "authors"] = "balanced"
    """``balanced``: forget and test samples subsampled to equal counts per image class, standardised
    feature; ``authors``: the DLFD authors' MIA (evaluation/mia.py:48-75) — every forget and test
    sample, no class balancing, a logistic regression on the raw loss without a scaler."""
    plots: bool = True
    robustness: Annotated[list[VisionRelearn], UniqueLabels] = Field(
        default_factory=list,
        description="attacks on the original, the oracle and the unlearned model alike (relearn: k-shot); rows "
        "<model>@<label> in metrics.json (docs/robustness.md)",
    )
    membership: MembershipAttack = Field(
        default_factory=MembershipAttack,
        description="per-example membership attack with shadow models (ulira, challenge; off: population)",
    )

    @model_validator(mode="after")
    def _authors_read_the_loss(self) -> VisionEval:
        if self.mia_protocol == "authors" and self.mia_feature != "loss":
            raise ValueError(
                "mia_protocol 'authors' reads the raw loss (evaluation/mia.py:9-21): set mia_feature: loss"
            )
        return self


class SGDMethod(MethodSpec):
    """SGD (momentum, weight decay) over the retain (or forget) set for ``epochs`` passes."""

    epochs: int = Field(1, ge=1)
    lr: float = Field(0.008, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(32, ge=2)


class DLFD(SGDMethod):
    """Distribution-Level Feature Distancing (Choi & Na 2024): perturb retain samples away from the
    forget features (OT) while keeping them classifiable, train on them; plain CE on clean retain
    batches while the monitored forgetting score is below ``threshold``. ``protocol`` picks the paper's
    reading or a reproduction of the authors' code (module ``otu.vision.methods.dlfd``)."""

    name: Literal["dlfd"]
    protocol: Literal["paper", "authors"] = Field(
        "paper",
        description="paper: OT on the perturbed samples, perturbation in eval / update in train mode, "
        "class-balanced monitor; authors: their train_dlfd as it runs (data-order batches, a retain "
        "batch skipped beside a short forget batch, clamp to [0, 1], OT on clean inputs, eval mode "
        "after the first batch, their MIA over all forget and val samples, best_val selection)",
    )
    alpha: float = Field(0.4, gt=0, description="perturbation step size α (pixel units)")
    perturb_steps: int = Field(15, ge=1, description="M perturbation steps per batch")
    ot_weight: float = Field(3.0, ge=0, description="weight of the OT term in the perturbation")
    lambda_start: float = Field(0.0, ge=0, description="CE weight λ_k at the pass start (linear)")
    lambda_end: float = Field(1.0, ge=0, description="CE weight λ_k at the pass end")
    threshold: float = Field(0.2, ge=0, description="dynamic forgetting: FS below this → plain CE")
    ot_cost: Literal["cosine", "sqeuclidean"] = "cosine"
    ot_eps: float = Field(0.01, gt=0, description="Sinkhorn entropic temperature ε (POT's reg)")
    ot_max_iter: int = Field(200, ge=1, description="Sinkhorn solver steps at most (Newton or sweep)")
    ot_tol: float = Field(1e-9, gt=0, description="Sinkhorn stops when the plan's marginals are this close (L1)")
    features: Literal["logits", "penultimate"] = "logits"
    check_every: int = Field(1, ge=1, description="batches between forgetting-score checks")
    monitor_samples: int = Field(
        300, ge=2, description="forget/val samples the monitor uses (protocol paper; authors: all)"
    )
    select: Literal["last", "best_val"] | None = Field(
        None,
        description="the returned model: the last one, or (the authors' rule) the one with the best "
        "validation accuracy among checks whose forgetting score ≤ select_max_fs (last if none); "
        "None: last under protocol paper, best_val under authors",
    )
    select_max_fs: float | None = Field(
        None,
        ge=0,
        description="forgetting-score bound of best_val (the authors' max_forgetting_score); None: threshold",
    )


class Retrain(MethodSpec):
    """Train a fresh model on the retain set with ``task.model``'s recipe (the oracle, again)."""

    name: Literal["retrain"]


class Finetune(SGDMethod):
    """Continue training the original on the retain set."""

    name: Literal["finetune"]


class NegGrad(SGDMethod):
    """Gradient ascent on the forget set's cross-entropy."""

    name: Literal["neggrad"]


VisionJob = Job[VisionData, VisionModel, VisionEval]
"""What the family's functions receive (``job.method``: one of the table's spec classes)."""

METHODS: dict[str, Method] = {
    "dlfd": Method(DLFD, "otu.vision.methods.dlfd:run"),
    "retrain": Method(Retrain, "otu.vision.methods.retrain:run"),
    "finetune": Method(Finetune, "otu.vision.methods.finetune:run"),
    "neggrad": Method(NegGrad, "otu.vision.methods.neggrad:run"),
}

SPEC = FamilySpec(
    data=VisionData,
    model=VisionModel,
    eval=VisionEval,
    methods=METHODS,
    metrics=("test_acc", "top2_acc", "mia_acc", "forgetting_score", "nomus"),
    checks="otu.vision.checks:check",
    devices=("cpu", "auto"),  # CPU-sized models: compute.device cuda is rejected, not ignored
)
