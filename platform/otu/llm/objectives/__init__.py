"""What each LLM method optimises, one module per method, and the hooks the loop calls.

A method's row in :data:`otu.llm.spec.METHODS` names its :class:`Objective` subclass; the loop
(:mod:`otu.llm.loop`) asks it for the forget term, the retain term, whether a frozen reference is
needed, extra answers for the forget questions, a parameter regulariser and the optimizer phases of
a step — it never looks at the method's name. The run's :class:`~otu.llm.recipe.Recipe` says which
NLL the terms take (``nll_reduction``) and whether alternating updates clip the forget step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from torch import Tensor, nn

from otu.llm.losses import StepBatches, reduced_nll
from otu.llm.recipe import OTU_RECIPE, Recipe
from otu.llm.spec import METHODS, LLMMethod, Retaining

if TYPE_CHECKING:
    from otu.llm.engine import Engine
    from otu.llm.regulariser import Regulariser
    from otu.llm.text import Batch

M = TypeVar("M", bound=LLMMethod)
R = TypeVar("R", bound=Retaining)


@dataclass(frozen=True)
class Phase:
    """One optimizer step within a loop step: the terms it back-propagates."""

    forget: bool = True
    retain: bool = True
    regularise: bool = True
    """Add the regulariser's gradient (when the objective has one) before this step."""
    clip: bool = True
    """Clip the step's gradients to ``method.max_grad_norm``."""


class Objective(ABC, Generic[M]):
    """One method's loss and needs. The defaults: no reference model, no retain terms, no
    regulariser, the forget items' own answers, one optimizer step per loop step."""

    needs_reference: ClassVar[bool] = False
    """Load a frozen θ₀ for :meth:`forget_term`'s ``ref``."""
    retain_weight: float = 0.0
    world_weight: float = 0.0
    """Weights of the NLL on retain / world QA in :meth:`retain_term`."""

    def __init__(self, method: M, recipe: Recipe = OTU_RECIPE) -> None:
        self.method = method
        self.recipe = recipe

    def nll(self, model: nn.Module, batch: Batch) -> Tensor:
        """The answer NLL of ``batch`` as the recipe's ``nll_reduction`` takes it (a scalar)."""
        return reduced_nll(model, batch, self.recipe.nll_reduction).mean()

    @abstractmethod
    def forget_term(self, model: nn.Module, ref: nn.Module | None, b: StepBatches) -> Tensor:
        """The method's loss on the forget batch."""

    def retain_term(self, model: nn.Module, b: StepBatches) -> Tensor | None:
        """:math:`w_r\\,\\ell_\\theta(\\text{retain}) + w_w\\,\\ell_\\theta(\\text{world})`, or None."""
        total: Tensor | None = None
        for weight, batch in ((self.retain_weight, b.retain), (self.world_weight, b.world)):
            if weight and batch is not None:
                term = weight * self.nll(model, batch)
                total = term if total is None else total + term
        return total

    def forget_answers(self, indices: Sequence[int]) -> list[str] | None:
        """Answers to pair with the forget questions (``indices`` into the forget split) in
        ``StepBatches.relabelled``; None: no such batch."""
        return None

    def regulariser(self, engine: Engine, seed: int) -> Regulariser | None:
        """A parameter regulariser whose gradient the loop adds before a regularising phase's step."""
        return None

    def phases(self) -> tuple[Phase, ...]:
        return (Phase(),)


class RetainingObjective(Objective[R]):
    """An objective with the method's retain and world NLL terms."""

    def __init__(self, method: R, recipe: Recipe = OTU_RECIPE) -> None:
        super().__init__(method, recipe)
        self.retain_weight, self.world_weight = method.retain_weight, method.world_weight


def objective_for(method: LLMMethod, recipe: Recipe = OTU_RECIPE) -> Objective:
    """The objective of ``method`` (its table row's implementation) under ``recipe``."""
    return METHODS[method.name].load()(method, recipe)
