"""Name → method family. The platform reaches families only through this module.

Each family package ``otu.<family>`` has two modules:

* ``spec.py`` — light (pydantic only) with ``SPEC: FamilySpec``: the models for ``task.data``,
  ``task.model``, ``eval`` and each method's hyperparameters, and the metric names it reports.
* ``family.py`` — the entry points (plain PyTorch, no Ray/MLflow), see :class:`FamilyAPI`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from otu.errors import OtuError

if TYPE_CHECKING:
    from otu.spec import Experiment

FAMILIES: dict[str, str] = {
    "vision": "otu.vision",
    "llm": "otu.llm",
    "tabular": "otu.tabular",
    "generative": "otu.generative",
}

EXTRAS: dict[str, tuple[str, ...]] = {
    "llm": ("transformers", "tokenizers", "datasets", "deepspeed", "rouge_score", "peft"),
}
"""Family → the modules of its pip extra (``otu[<family>]``); families not listed need none."""


TOTAL_STEPS = "total_steps"
"""Optional key of a loop's reported metrics: how many reports the loop will make in all, so the
platform can show step/total and an ETA. The platform strips it from the recorded metrics."""


class Reporter(Protocol):
    """``report(step, metrics, model=None)``: per-step metrics from inside an unlearning loop.

    Pass the live ``model`` so the platform can evaluate checkpoints (``dynamics.every``); it
    decides when to snapshot, so passing it on every step costs nothing. A per-rank loop
    (``unlearn_worker``) calls ``report`` on every rank with the same metrics and, on
    ``dynamics.every`` steps, a checkpoint directory ``load_unlearned`` reads, which every rank
    wrote its part of; the directory is the reporter's from then on (it may move or delete it).
    Include ``TOTAL_STEPS`` in the metrics (every call, or at least the first) to get a progress bar."""

    def __call__(self, step: int, metrics: Mapping[str, float], model: Any = None) -> None: ...


@dataclass(frozen=True)
class FamilySpec:
    """The spec sections a family owns, validated by ``otu.spec`` before any work starts."""

    data: type[BaseModel]
    model: type[BaseModel]
    eval: type[BaseModel]
    methods: Mapping[str, type[BaseModel]]
    metrics: tuple[str, ...]
    """Metric names ``evaluate`` returns (sweep objectives must be among them)."""
    method_metrics: Mapping[str, tuple[str, ...]] | None = None
    """Where methods of the family report different metrics: method name → its metric names."""
    validate: Callable[[Experiment], None] | None = None
    """Optional cross-field / data checks (files exist, columns present…); raise SpecError/DataError."""
    devices: tuple[str, ...] = ("cpu", "cuda", "auto")
    """``compute.device`` values the family honours (``auto`` on a CPU-only family means CPU)."""


    def metrics_for(self, method: str) -> tuple[str, ...]:
        if self.method_metrics and method in self.method_metrics:
            return self.method_metrics[method]
        return self.metrics


class FamilyAPI(Protocol):
    """What ``otu.<family>.family`` provides."""

    def prepare(self, exp: Experiment, cache_dir: Path) -> Any:
        """Data splits, original model and retain-only oracle; cached on disk by content hash."""

    def reference_models(self, prepared: Any) -> dict[str, Any]:
        """``{"original": model, "retrained": model}`` (``retrained`` only where there is an oracle)."""

    def unlearn(self, exp: Experiment, prepared: Any, report: Reporter, checkpoint_dir: Path) -> Any:
        """Run the method named by ``exp.method``; return the unlearned model."""

    def evaluate(self, exp: Experiment, prepared: Any, model: Any) -> dict[str, float]:
        """Flat metric name → number."""

    def plots(self, exp: Experiment, prepared: Any, models: dict[str, Any], out_dir: Path) -> list[Path]:
        """Write the family's figures into ``out_dir``; return their paths."""


def known_families() -> list[str]:
    return sorted(FAMILIES)


def family_spec(name: str) -> FamilySpec:
    return import_module(f"{FAMILIES[name]}.spec").SPEC


def require_extra(name: str) -> None:
    """Raise a one-line :class:`OtuError` if the family's pip extra is not installed."""
    if any(find_spec(module) is None for module in EXTRAS.get(name, ())):
        raise OtuError(f"the {name} family needs the '{name}' extra: pip install 'otu[{name}]'")


def family_api(name: str) -> FamilyAPI:
    require_extra(name)
    return import_module(f"{FAMILIES[name]}.family")  # type: ignore[return-value]
