"""Spec sections of the vision family (classifier instance unlearning: DLFD and baselines)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from otu.registry import FamilySpec
from otu.spec import Section


class VisionData(Section):
    source: Literal["digits", "file"] = "digits"
    """``digits``: scikit-learn's bundled 8×8 digits; ``file``: a Parquet/NPZ table (``path``)."""
    path: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    identity_column: str = "identity"
    forget_size: int | None = Field(None, ge=1, description="forget this many random training samples")
    forget_fraction: float | None = Field(None, gt=0, lt=1)
    forget_identities: list[str | int] | None = None
    """Forget every sample whose identity column takes one of these values (file source)."""
    test_fraction: float = Field(0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_forget_request(self) -> VisionData:
        given = [k for k in ("forget_size", "forget_fraction", "forget_identities") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one forget request, not {given}")
        if not given:
            self.forget_size = 100
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs path (a .parquet or .npz file)")
        if self.forget_identities is not None and self.source != "file":
            raise ValueError("forget_identities needs source 'file' with an identity column")
        return self


class VisionModel(Section):
    arch: Literal["cnn", "resnet18"] = "cnn"
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(5e-4, ge=0)


class VisionEval(Section):
    mia_splits: int = Field(10, ge=2, description="stratified shuffle splits of the MIA classifier")
    plots: bool = True


class _Method(Section):
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)


class DLFD(_Method):
    """Distance-based Learning-Free... see Choi & Na 2024: perturb retain samples away from forget
    features (OT), train on them with CE; plain CE once forgetting is below ``threshold``."""

    name: Literal["dlfd"]
    alpha: float = Field(0.01, gt=0, description="perturbation step size α")
    perturb_steps: int = Field(5, ge=1, description="M perturbation steps per batch")
    ot_weight: float = Field(1.0, ge=0, description="weight of the OT term in the perturbation")
    lambda_start: float = Field(0.0, ge=0, description="CE weight λ_k at the pass start (linear)")
    lambda_end: float = Field(1.0, ge=0, description="CE weight λ_k at the pass end")
    threshold: float = Field(0.02, ge=0, description="dynamic forgetting: FS below this → plain CE")
    ot_cost: Literal["cosine", "sqeuclidean"] = "cosine"
    ot_blur: float = Field(0.01, gt=0, description="Sinkhorn ε (geomloss blur = ε^(1/p))")
    features: Literal["logits", "penultimate"] = "logits"


class Retrain(_Method):
    name: Literal["retrain"]


class Finetune(_Method):
    name: Literal["finetune"]


class NegGrad(_Method):
    name: Literal["neggrad"]
    forget_weight: float = Field(1.0, gt=0)


SPEC = FamilySpec(
    data=VisionData,
    model=VisionModel,
    eval=VisionEval,
    methods={"dlfd": DLFD, "retrain": Retrain, "finetune": Finetune, "neggrad": NegGrad},
    metrics=("test_acc", "top2_acc", "mia_acc", "forgetting_score", "nomus"),
)
