"""The contract between the platform and a method family.

A family package ``otu.<family>`` provides:

* ``spec.py`` — pydantic only: the sections it owns (``task.data``, ``task.model``, ``eval``), its
  **method table** ``METHODS: dict[name, Method]`` (each row: the method's spec class and where its
  implementation lives, imported on first use) and ``SPEC: FamilySpec``;
* ``family.py`` — ``FAMILY``: an object implementing :class:`Family` (plain PyTorch, no Ray/MLflow)
  and, by subclassing them, the optional capabilities it has (:class:`DistributedUnlearning`,
  :class:`SavedModels`, :class:`ItemOutputs`).

The platform hands a family only its own sections (:class:`Job`) and a small :class:`RunContext`
(seed, compute settings, cache directory, reporter, checkpoint directory), never the whole spec.
Environment checks (files, checkpoints, data columns) are a separate function named by
``FamilySpec.checks``: the driver runs it once; workers and actors only validate the schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from otu.sections import Compute

TOTAL_STEPS = "total_steps"
"""Optional key of a loop's step metrics: how many steps the loop will report in all, so the
platform can show step/total and an ETA. The platform strips it from the recorded metrics."""


def load_object(path: str) -> Any:
    """``"package.module:attribute"`` → the attribute (the module is imported now)."""
    module, _, attribute = path.partition(":")
    return getattr(import_module(module), attribute)


@dataclass(frozen=True)
class Method:
    """One row of a family's method table."""

    spec: type[BaseModel]
    """The ``method`` section (a pydantic model with ``name: Literal["<name>"]``)."""
    impl: str
    """``"module:attribute"`` of the implementation, imported only when the method runs."""
    metrics: tuple[str, ...] | None = None
    """Metric names, where this method reports others than the family's."""

    def load(self) -> Any:
        return load_object(self.impl)


@dataclass(frozen=True)
class FamilySpec:
    """The spec sections a family owns; :mod:`otu.spec` assembles the typed experiment from them."""

    data: type[BaseModel]
    model: type[BaseModel]
    eval: type[BaseModel]
    methods: Mapping[str, Method]
    metrics: tuple[str, ...]
    """Metric names ``evaluate`` returns (sweep objectives and ``dynamics.select`` among them)."""
    checks: str | None = None
    """``"module:function"`` taking ``(job, ctx)``: environment checks (files exist, columns present,
    non-empty sets); raise SpecError/DataError. Run once, in the driver."""
    rules: str | None = None
    """``"module:function"`` taking the typed ``job``: rules across the family's sections that the
    schema alone decides (a method that cannot be audited by an ``eval`` setting); raise SpecError.
    Run on every parse (workers' too), so spec-only: no files, no torch."""
    devices: tuple[str, ...] = ("cpu", "cuda", "auto")
    """``compute.device`` values the family honours (``auto`` on a CPU-only family means CPU)."""
    data_commands: str | None = None
    """``"module:function"`` adding the family's ``otu data`` subcommands to an argparse
    subparsers object (each sets ``handler``, a function of the parsed namespace)."""

    def metrics_for(self, method: str) -> tuple[str, ...]:
        row = self.methods.get(method)
        return row.metrics if row is not None and row.metrics else self.metrics


class Reporter(Protocol):
    """What an unlearning loop reports to while it runs.

    A per-rank loop calls every method on every rank with the same arguments (the platform's
    reporters act on rank 0 only)."""

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Per-step metrics (include :data:`TOTAL_STEPS` at least once for a progress bar)."""

    def wants_checkpoint(self, step: int) -> bool:
        """Whether ``step``'s model should be handed to :meth:`on_checkpoint` (``dynamics.every``);
        the same answer on every rank."""

    def on_checkpoint(self, step: int, checkpoint: Any) -> None:
        """A model to evaluate: the live module (the platform snapshots it) or, from a per-rank
        loop, a checkpoint directory :meth:`SavedModels.load_unlearned` reads, which every rank
        wrote its part of; the directory is the reporter's from then on (it may move or delete it)."""


class NullReporter:
    """Records nothing and wants no checkpoints."""

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def wants_checkpoint(self, step: int) -> bool:
        return False

    def on_checkpoint(self, step: int, checkpoint: Any) -> None:
        pass


class StepCallback(NullReporter):
    """Hands each step's ``(step, metrics)`` to a function; wants no checkpoints."""

    def __init__(self, on_step: Callable[[int, Mapping[str, float]], object]) -> None:
        self._on_step = on_step

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self._on_step(step, metrics)


@dataclass(frozen=True)
class RunContext:
    """What a family needs from the platform besides its own sections."""

    seed: int
    compute: Compute = field(default_factory=Compute)
    cache_dir: Path = Path("otu-runs/cache")
    reporter: Reporter = field(default_factory=NullReporter)
    checkpoint_dir: Path | None = None
    """Where ``unlearn`` saves the unlearned model, when the family saves one."""
    resume_dir: Path | None = None
    """Where a loop keeps the checkpoints it resumes from after a restart (``compute.checkpoint_every``);
    None: the loop keeps none."""

    @property
    def device(self) -> str:
        return self.compute.device

    @property
    def threads(self) -> int:
        return self.compute.threads


DataT = TypeVar("DataT", bound=BaseModel, covariant=True)
ModelT = TypeVar("ModelT", bound=BaseModel, covariant=True)
EvalT = TypeVar("EvalT", bound=BaseModel, covariant=True)


@dataclass(frozen=True)
class Job(Generic[DataT, ModelT, EvalT]):
    """A family's own sections of one experiment; ``method`` is one of its table's spec classes."""

    data: DataT
    model: ModelT
    method: Any
    eval: EvalT


class Family(Protocol):
    """What every family's ``FAMILY`` does."""

    def prepare(self, job: Any, ctx: RunContext) -> Any:
        """Data splits, original model and retain-only oracle; cached under ``ctx.cache_dir``. A
        prepared task whose models come from cache entries names them in a ``cache_id`` attribute
        (str): the platform's cached reference metrics are keyed by it."""

    def reference_models(self, prepared: Any) -> dict[str, Any]:
        """``{"original": model, "retrained": model}`` (``retrained`` only where there is an oracle)."""

    def unlearn(self, job: Any, prepared: Any, ctx: RunContext) -> Any:
        """Run ``job.method`` (its table row's implementation); return the unlearned model."""

    def evaluate(self, job: Any, prepared: Any, model: Any) -> dict[str, float]:
        """Flat metric name → number."""

    def plots(self, job: Any, prepared: Any, models: dict[str, Any], out_dir: Path) -> list[Path]:
        """Write the family's figures into ``out_dir``; return their paths."""


@runtime_checkable
class SavedModels(Protocol):
    """The family saves the unlearned model to ``ctx.checkpoint_dir`` and can load it back."""

    def load_unlearned(self, job: Any, prepared: Any, checkpoint: Path) -> Any:
        """The model saved in ``checkpoint`` (what ``unlearn`` or a per-rank loop wrote)."""

    def load_checkpoint(self, job: Any, prepared: Any, path: str) -> Any:
        """A user's checkpoint to evaluate (``otu eval --model``): a directory or a hub id."""


@runtime_checkable
class DistributedUnlearning(SavedModels, Protocol):
    """The family's loop runs as one process per rank on a process group made by a launcher."""

    def unlearn_worker(self, job: Any, ctx: RunContext) -> None:
        """One rank: prepare (rank 0 first), unlearn, save into ``ctx.checkpoint_dir`` (collective)."""


@runtime_checkable
class Attacks(Protocol):
    """The family attacks evaluated models (``eval.robustness``: relearning, quantization, probes)."""

    def attack_labels(self, job: Any) -> list[str]:
        """The labels of ``job``'s attacks, in spec order (rows ``<model>@<label>``)."""

    def attacked(self, job: Any, prepared: Any, model: Any, seed: int) -> dict[str, tuple[dict, dict]]:
        """Per attack label: the attacked copy's metrics and ``model``'s own metrics on the same
        evaluation items (a relearn on part of the forget set is scored on the other part). The
        model itself is left as it was."""


@runtime_checkable
class LaunchedAttacks(Attacks, DistributedUnlearning, Protocol):
    """Some attacks train the model (relearning); where the unlearning runs under DeepSpeed or on
    several ranks, the platform runs each of them through the same launcher, as one run of the
    family's per-rank loop (:mod:`otu.runtime.launch`), and hands the models they saved back to
    :meth:`attacked`."""

    def launched_attacks(self, job: Any, compute: Compute) -> list[str]:
        """Labels of ``job``'s attacks that run through the launcher under ``compute`` (none: every
        attack in the evaluating process, as :class:`Attacks`)."""

    def attack_worker(self, job: Any, label: str, model: str, checkpoint: Path | None, ctx: RunContext) -> None:
        """One rank of attack ``label`` on ``model`` (``original``, ``retrained``: the family's
        reference models; otherwise the checkpoint directory ``checkpoint`` the run saved): prepare
        (rank 0 first), train, save into ``ctx.checkpoint_dir`` (collective)."""

    def load_attacked(self, job: Any, prepared: Any, model: str, checkpoint: Path | None, saved: Path) -> Any:
        """The attacked model an :meth:`attack_worker` run on ``model`` / ``checkpoint`` saved in ``saved``."""

    def attacked(
        self, job: Any, prepared: Any, model: Any, seed: int, trained: Mapping[str, Any] | None = None
    ) -> dict[str, tuple[dict, dict]]:
        """As :meth:`Attacks.attacked`; ``trained``: per label, the attacked model a launcher run made
        (scored instead of attacking in this process)."""


@runtime_checkable
class ItemOutputs(Protocol):
    """The family writes per-item outputs (e.g. generations) beside the run's metrics."""

    def outputs(self, job: Any, prepared: Any, models: dict[str, Any], out_dir: Path) -> list[Path]: ...


@dataclass(frozen=True)
class ShadowPlan:
    """The shadow models a family's membership attack needs (``eval.membership``)."""

    tasks: list[dict[str, Any]]
    """One JSON-able description per shadow; with the task section and seed, its content hash keys the
    platform's cache of the shadow's result."""
    parallel: int | None = None
    """Shadows trained at once at most (None: as many as the platform's resources allow)."""


@runtime_checkable
class Membership(Protocol):
    """The family audits models with per-example membership attacks on shadow models: the platform
    trains the planned shadows (each one independently, anywhere: a Ray task), caches each result as
    it arrives, and hands all of them back to :meth:`membership`."""

    def shadow_plan(self, job: Any, prepared: Any, seed: int) -> ShadowPlan:
        """The shadows ``job.eval`` asks for (no tasks: no attack)."""

    def train_shadow(self, job: Any, prepared: Any, task: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        """Train one planned shadow and return what the attack reads of it: a mapping of names to numpy
        arrays (small: per-example outputs, not weights). Deterministic in ``task``."""

    def membership(
        self, job: Any, prepared: Any, models: Mapping[str, Any], shadows: list[dict[str, Any]], out_dir: Path
    ) -> dict[str, dict[str, float]]:
        """Per model name: the attack's metrics, from the shadows' results (in plan order); writes the
        per-example scores (Parquet) into ``out_dir`` and, when the family plots, figures into
        ``out_dir/plots``."""


@runtime_checkable
class Requests(Protocol):
    """The family serves deletion requests in sequence: a spec may name several forget sets, and the
    platform runs them as a chain (:mod:`otu.runtime.requests`), request k unlearning request k−1's
    model, each a one-request experiment of its own."""

    def request_count(self, job: Any) -> int:
        """How many requests ``job`` names (0: a plain one-request run)."""

    def request_overrides(self, job: Any, index: int, previous: Path | None) -> dict[str, Any]:
        """Dotted spec keys that make the experiment request ``index`` (0-based), unlearning the
        checkpoint ``previous`` (None for the first)."""

    def request_metrics(self, job: Any) -> list[str]:
        """The metrics ``requests.png`` plots against the request index."""
