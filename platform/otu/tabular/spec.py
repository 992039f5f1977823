"""Spec sections of the tabular family: Xu & Strohmer feature unlearning (W₂ barycenter) and
data-point ("marginal") unlearning with a mutual-information regulariser."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from otu.errors import SpecError
from otu.family import FamilySpec, Job, Method
from otu.paths import LocalPath
from otu.sections import AttackSection, MembershipAttack, MethodSpec, Section, UniqueLabels

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class TabularData(Section):
    """``file``: a CSV/Parquet table with named target and sensitive columns (numeric columns are
    standardised, ``categorical`` ones one-hot encoded). ``digits``: scikit-learn's bundled digits;
    the target is the digit, the sensitive attribute is derived from the images ("ink": mean pixel
    intensity above the median image's), and ``forget_fraction`` of ``forget_class``'s training
    images form the forget set of data-point unlearning."""

    source: Literal["file", "digits"] = "file"
    path: LocalPath | None = None
    target: str | None = None
    sensitive: str | None = None
    columns: list[str] | None = None
    """Feature columns (default: every column but the target and the sensitive one)."""
    categorical: list[str] = []
    """Feature columns to one-hot encode; every other feature column must be numeric."""
    test_fraction: float = Field(0.25, gt=0, lt=1)
    forget_class: int = Field(3, ge=0, le=9, description="digits: the class to forget part of")
    forget_fraction: float = Field(0.75, gt=0, le=1, description="digits: share of that class forgotten")

    @model_validator(mode="after")
    def _consistent(self) -> TabularData:
        if self.source == "digits":
            given = [k for k in ("path", "target", "sensitive", "columns") if getattr(self, k) is not None]
            if given or self.categorical:
                raise ValueError(
                    "source 'digits' derives its target (the digit) and sensitive attribute (ink); "
                    f"remove {given + (['categorical'] if self.categorical else [])}"
                )
            return self
        missing = [k for k in ("path", "target", "sensitive") if not getattr(self, k)]
        if missing:
            raise ValueError(f"source 'file' needs {', '.join(missing)}")
        assert self.path is not None
        if not self.path.lower().endswith(TABLE_SUFFIXES):
            raise ValueError(f"path {self.path!r} must end in {', '.join(TABLE_SUFFIXES)}")
        if self.target == self.sensitive:
            raise ValueError(f"target and sensitive must be different columns (both {self.target!r})")
        labels = (self.target, self.sensitive)
        clash = [c for c in [*(self.columns or []), *self.categorical] if c in labels]
        if clash:
            raise ValueError(f"columns and categorical must not name the target or sensitive column (got {clash})")
        if self.columns is not None:
            if not self.columns:
                raise ValueError("columns: give at least one feature column, or omit it for all")
            stray = [c for c in self.categorical if c not in self.columns]
            if stray:
                raise ValueError(f"categorical columns {stray} are not among columns {self.columns}")
        return self


class TabularModel(Section):
    """The digits classifier (shared vision architectures): its penultimate layer gives the
    representations of feature unlearning; it is the original model of data-point unlearning.
    Defaults: the authors' MNIST training (Adam, lr 1e-3, batch 64, 100 epochs)."""

    arch: Literal["cnn", "resnet18"] = "cnn"
    epochs: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=2)
    weight_decay: float = Field(0.0, ge=0)


PROBE_METRICS = ("leakage_auc", "leakage_bacc")


class TabularProbe(AttackSection):
    """An attacker who knows the sensitive group of ``shots`` training samples (a seeded, stratified
    subset) fits a probe on their unlearned features and predicts everyone's group in the test split:
    leakage under a realistic budget, and with an MLP a stronger probe than the evaluation's."""

    attack: Literal["probe"]
    shots: int = Field(100, ge=2, description="labelled training samples the attacker has (each group among them)")
    classifier: Literal["logistic", "forest", "mlp"] = Field(
        "mlp", description="the probe: the evaluation's logistic regression or forest, or an MLP (scikit-learn)"
    )
    hidden: int = Field(64, ge=1, description="mlp: units of its two hidden layers")

    @property
    def metrics(self) -> tuple[str, ...]:
        """What it reports (the evaluation's leakage metrics; no recovery ratio: names are not forget_*)."""
        return PROBE_METRICS


class TabularEval(Section):
    """Downstream classifiers (fit on the unlearned training features, scored on the test split):
    they predict the target (utility) and, as the adversary, the sensitive attribute (leakage);
    each metric is the strongest classifier's."""

    classifiers: list[Literal["logistic", "forest"]] = Field(["logistic", "forest"], min_length=1)
    logistic_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression")
    forest_trees: int = Field(100, ge=1)
    forest_max_depth: int | None = Field(None, ge=1)
    frontier_points: int = Field(11, ge=2, description="t values on [0, 1] in the frontier plot")
    plots: bool = True
    robustness: Annotated[list[TabularProbe], UniqueLabels] = Field(
        default_factory=list,
        description="feature unlearning: probes fit on k labelled samples of each model's features (the original's "
        "and the unlearned); rows <model>@<label> in metrics.json (docs/robustness.md)",
    )
    membership: MembershipAttack = Field(
        default_factory=MembershipAttack,
        description="data-point unlearning: per-example membership attack with shadow models (ulira, challenge; "
        "off: population)",
    )


class FeatureMethod(MethodSpec):
    """Unlearns a feature (the sensitive attribute) from a table's or digits embeddings' features:
    the family prepares a :class:`~otu.tabular.tables.FeatureTask` for it."""


class PointMethod(MethodSpec):
    """Forgets training points of the digits classifier: the family prepares a
    :class:`~otu.tabular.networks.DigitsTask` for it (``task.data.source: digits``)."""


class Barycenter(FeatureMethod):
    """Map each group's features to the W₂ barycenter of the group conditionals P(X | Z=z) and
    interpolate: x_t = (1−t)·x + t·T_z(x) (McCann). ``gaussian``: Bures–Wasserstein barycenter
    and affine maps; ``empirical``: for two groups the OT map between them and McCann's
    interpolation at the group weights (every point keeps its own image), for more a free-support
    barycenter and OT maps onto it (exact, or entropic when ``entropic_reg`` > 0).
    ``apply_to: prediction`` unlearns the estimate of E[Y | X, Z] (its log-odds) instead of the
    features — the conditional version, whose optimum is the barycenter of the laws of
    E[Y | X, Z] given Z (``score_with_group: false``: E[Y | X])."""

    name: Literal["barycenter"]
    t: float = Field(1.0, ge=0, le=1, description="McCann interpolation: 0 keeps x, 1 is the barycenter")
    variant: Literal["gaussian", "empirical"] = "gaussian"
    apply_to: Literal["features", "prediction"] = "features"
    cov_reg: float = Field(1e-6, ge=0, description="ridge added to each group covariance (gaussian)")
    support_size: int = Field(100, ge=1, description="barycenter support points (empirical, > 2 groups)")
    entropic_reg: float = Field(0.0, ge=0, description="Sinkhorn ε of the maps; 0: exact OT (empirical)")
    bures_max_iter: int = Field(1000, ge=1, description="Bures fixed-point iterations (gaussian; POT's)")
    support_max_iter: int = Field(100, ge=1, description="free-support iterations (empirical; POT's)")
    tol: float = Field(1e-7, gt=0, description="stopping threshold of either solver (POT's)")
    score_c: float = Field(1.0, gt=0, description="inverse L2 strength of the E[Y|X,Z] model (prediction)")
    score_with_group: bool = Field(
        True,
        description="prediction: estimate E[Y|X,Z] (the group one-hot is an input; the barycenter of "
        "its group laws is the optimal Z-independent L² outcome) — false: E[Y|X]",
    )


class _Training(PointMethod):
    """Adam on the retain set from the original model (authors: lr 1e-3, retain batches of 64)."""

    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1, description="retain samples per step")


class Marginal(_Training):
    """CE(retain) + γ·Î(softmax outputs; Z): Z = 0 on a batch of the full training set (retain and
    forget samples), Z = 1 on the retain samples; Î is the plug-in mutual information."""

    name: Literal["marginal"]
    gamma: float = Field(4.0, ge=0, description="MI weight γ (authors' MNIST run: 4)")
    forget_batch_size: int = Field(16, ge=1, description="forget samples per step (authors: 16)")


class Finetune(_Training):
    """Baseline: continue training on the retain set with plain cross-entropy."""

    name: Literal["finetune"]


FEATURE_METRICS = (
    "utility_auc",
    "utility_acc",
    "leakage_auc",
    "leakage_bacc",
    "discrimination",
    "mi_estimate",
)
DATAPOINT_METRICS = ("mi", "retain_acc", "forget_acc", "test_acc")

TabularJob = Job[TabularData, TabularModel, TabularEval]
"""What the family's functions receive (``job.method``: one of the table's spec classes)."""

METHODS: dict[str, Method] = {
    "barycenter": Method(Barycenter, "otu.tabular.methods.barycenter:run", metrics=FEATURE_METRICS),
    "marginal": Method(Marginal, "otu.tabular.methods.marginal:run", metrics=DATAPOINT_METRICS),
    "finetune": Method(Finetune, "otu.tabular.methods.finetune:run", metrics=DATAPOINT_METRICS),
}


def rules(job: TabularJob) -> None:
    """``eval.membership`` audits which training points a classifier saw: feature unlearning (the
    barycenter) has no per-example membership to audit."""
    if isinstance(job.method, FeatureMethod) and job.eval.membership.attack != "population":
        raise SpecError(
            f"eval.membership: {job.method.name!r} unlearns a feature, not training points: there is no "
            "per-example membership to audit (use a data-point method such as marginal, or attack: population)"
        )


SPEC = FamilySpec(
    data=TabularData,
    model=TabularModel,
    eval=TabularEval,
    methods=METHODS,
    metrics=FEATURE_METRICS + DATAPOINT_METRICS,
    checks="otu.tabular.checks:check",
    rules="otu.tabular.spec:rules",
    devices=("cpu", "auto"),  # CPU-sized models: compute.device cuda is rejected, not ignored
)
