"""Spec sections of the generative family (class unlearning for one-step generators).

Defaults. Optimiser settings of the semi-dual loop follow the UOTM authors' public code (Choi, Choi &
Kang 2023): Adam with betas (0.5, 0.9), potential learning rate 1e-4, generator 1.6e-4, R1 penalty
γ = 0.2 on real samples, one potential step per generator step, KL marginal relaxation. τ (the
divergence weight), the cost weights and the step count are scaled to 8×8 digits in [0, 1] so one run
takes seconds on one CPU thread: τ = 1, forget weight 2, transport weight 1 (per-pixel mean squared
distance), 300 steps. The two baselines use the same step count, batch and learning rate.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from otu.family import FamilySpec, Job, Method
from otu.paths import LocalPath
from otu.sections import AttackSection, MethodSpec, Section, UniqueLabels


class GenerativeData(Section):
    source: Literal["digits"] = "digits"
    """scikit-learn's bundled 8×8 digits (1,797 images, classes 0–9)."""
    forget_class: int
    """The class the generator must stop producing."""


class GeneratorSpec(Section):
    """The original generator: loaded from ``checkpoint`` or trained once (Sinkhorn divergence)."""

    checkpoint: LocalPath | None = None
    """A generator saved with :func:`otu.generative.models.save_generator`; when given, it is the
    original and the architecture and training fields below are ignored."""
    latent_dim: int = Field(16, ge=1, description="dimension of the Gaussian noise z")
    hidden: int = Field(256, ge=1, description="units per hidden layer")
    layers: int = Field(3, ge=1, description="hidden layers (LeakyReLU 0.2)")
    steps: int = Field(1000, ge=1, description="Adam steps of pretraining")
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(256, ge=2, description="generated and real samples per step")
    blur: float = Field(0.1, gt=0, description="Sinkhorn blur on pixels in [0, 1]; ε = blur²")
    scaling: float = Field(0.5, gt=0, lt=1, description="geomloss ε-annealing ratio")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam β₁")
    beta2: float = Field(0.9, ge=0, lt=1, description="Adam β₂")


class ClassifierSpec(Section):
    """A digits classifier (``otu.classifiers`` CNN/ResNet) trained with Adam on all images."""

    arch: Literal["cnn", "resnet18"] = "cnn"
    width: int | None = Field(None, ge=1, description="first-stage channels (cnn 32, resnet18 64)")
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=2)
    weight_decay: float = Field(5e-4, ge=0)


class GenerativeModel(Section):
    generator: GeneratorSpec = GeneratorSpec()
    evaluator: ClassifierSpec = ClassifierSpec()
    """Classifies generated samples for the metrics (PUL, shares) and gives u-FID's features."""
    guide: ClassifierSpec = ClassifierSpec(width=16)
    """The classifier inside the forget cost, trained with seed + 1: metrics read a different
    classifier than the one the generator is optimised against, so fooling it does not count."""


class GenerativeRelearn(AttackSection):
    """k-shot relearning of the forgotten class: a copy fine-tuned with the pretraining objective
    (Sinkhorn divergence) on the retained images and a seeded ``shots`` of the forgotten class's,
    repeated to the class's share of the data (docs/robustness.md)."""

    attack: Literal["relearn"]
    shots: int = Field(10, ge=1, description="forgotten-class images the attacker has (a seeded subset)")
    steps: int = Field(100, ge=1, description="Adam steps")
    lr: float = Field(1.6e-4, gt=0, description="generator learning rate (the finetune baseline's)")
    batch_size: int = Field(256, ge=2)
    blur: float = Field(0.1, gt=0, description="Sinkhorn blur (as pretraining)")
    scaling: float = Field(0.5, gt=0, lt=1)


class GenerativeEval(Section):
    num_samples: int = Field(2000, ge=10, description="generated samples per evaluation (fixed noise)")
    grid_size: int = Field(10, ge=1, description="the sample grid shows grid_size² samples")
    plots: bool = True
    robustness: Annotated[list[GenerativeRelearn], UniqueLabels] = Field(
        default_factory=list,
        description="attacks on the original and the unlearned generator alike (relearn: k shots of the forgotten "
        "class); rows <model>@<label> in metrics.json (docs/robustness.md)",
    )


class Finetuning(MethodSpec):
    """Adam on a copy of the original generator for ``steps`` steps of ``batch_size`` samples."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1.6e-4, gt=0, description="generator learning rate")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)


class CostWeights(Finetuning):
    """The weights of the unlearning cost c(z, y) (:mod:`otu.generative.methods.common`)."""

    forget_weight: float = Field(2.0, ge=0, description="λ: weight of the guide's p(forget class)")
    transport_weight: float = Field(1.0, ge=0, description="α: weight of mean (G(z) − G₀(z))²")


class ForgetCost(CostWeights):
    """Naive baseline: minimise the unlearning cost c(z, G(z)) alone, with no marginal term."""

    name: Literal["forget_cost"]


class UOTUnlearn(CostWeights):
    r"""UOT-Unlearn: the UOT semi-dual between noise and retained-class data with cost
    c(z, y) = α·mean((y − G₀(z))²) + λ·p_guide(forget | y) and τ-weighted f-divergence marginals."""

    name: Literal["uot_unlearn"]
    tau: float = Field(
        1.0,
        gt=0,
        description="τ: weight of the f-divergence marginal relaxation, Ψ* = τ·f*(·/τ); UOTM's code "
        "weights the cost by its τ_U instead — the same plan at τ = 1/τ_U",
    )
    divergence: Literal["kl", "chi2"] = "kl"
    lr_potential: float = Field(1e-4, gt=0)
    potential_hidden: int = Field(256, ge=1, description="units of the potential MLP's 2 layers")
    potential_steps: int = Field(1, ge=1, description="potential updates per generator update")
    r1_gamma: float = Field(0.2, ge=0, description="R1 penalty γ/2·‖∇v(y)‖² on real samples")


class Finetune(Finetuning):
    """Baseline: continue training on retained-class data with the pretraining objective."""

    name: Literal["finetune"]
    blur: float = Field(0.1, gt=0, description="Sinkhorn blur (as pretraining)")
    scaling: float = Field(0.5, gt=0, lt=1)


NUM_CLASSES = 10
METRICS = (
    "pul",
    "ufid",
    "forget_share",
    "mean_confidence",
    *(f"class_share_{k}" for k in range(NUM_CLASSES)),
)


GenerativeJob = Job[GenerativeData, GenerativeModel, GenerativeEval]
"""What the family's functions receive (``job.method``: one of the table's spec classes)."""

METHODS: dict[str, Method] = {
    "uot_unlearn": Method(UOTUnlearn, "otu.generative.methods.uot_unlearn:run"),
    "forget_cost": Method(ForgetCost, "otu.generative.methods.forget_cost:run"),
    "finetune": Method(Finetune, "otu.generative.methods.finetune:run"),
}

SPEC = FamilySpec(
    data=GenerativeData,
    model=GenerativeModel,
    eval=GenerativeEval,
    methods=METHODS,
    metrics=METRICS,
    checks="otu.generative.checks:check",
    devices=("cpu", "auto"),  # CPU-sized models: compute.device cuda is rejected, not ignored
)
