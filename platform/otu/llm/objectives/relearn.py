r"""The relearning attack as a run of the unlearning loop: descend the answer NLL of the relearn set.

``eval.robustness``'s ``relearn`` on a run whose unlearning runs under DeepSpeed or on several ranks
(:meth:`otu.llm.family.LLMFamily.attack_worker`) is one run of :func:`otu.llm.loop.run_worker`
whose forget split is the relearn set (:func:`otu.llm.attacks.relearn_split`) and whose method is
:class:`RelearnFinetune`, the attack's recipe as loop knobs — the in-process
:func:`otu.llm.attacks.relearn`'s:

* loss :math:`\frac1B\sum_i \overline{\mathrm{NLL}}_\theta(a_i\mid q_i)` (per-sequence token mean, so a
  global batch split over ranks and micro-batches gives the one-process value);
* the global batch :math:`\min(b, n)\cdot g` of the attack's ``batch_size`` b and ``grad_accum`` g
  (n relearn items; the loop's micro-batches are ``min(b, n) / world`` items, g per step);
* AdamW at the attack's constant ``lr`` (no warm-up) and ``weight_decay``, no gradient clipping,
  ``steps`` or ``epochs`` (:func:`~otu.llm.attacks.relearn_steps`), optional LoRA.

It is no row of the method table: a spec never names it, the family derives it from the attack.
"""

from __future__ import annotations

from typing import Literal

from otu.llm.objectives import Objective, Phase
from otu.llm.spec import LLMMethod, Relearn


class RelearnFinetune(LLMMethod):
    """A relearning attack's fine-tune as the loop's method (derived, never parsed from a spec)."""

    name: Literal["relearn"] = "relearn"


def relearn_method(attack: Relearn, n: int, steps: int) -> RelearnFinetune:
    """``attack``'s recipe on ``n`` relearn items for ``steps`` optimizer steps, as loop knobs."""
    return RelearnFinetune(
        lr=attack.lr,
        lr_schedule="constant",
        warmup_epochs=0.0,
        weight_decay=attack.weight_decay,
        max_grad_norm=0.0,
        lora=attack.lora,
        steps=steps,
        stop_after_epochs=float(steps),  # never before the last step (a layout's default would cut it)
        batch_size=min(attack.batch_size, n) * attack.grad_accum,
        nll_reduction="sequence_mean",
    )


class RelearnObjective(Objective[RelearnFinetune]):
    """Gradient descent on the relearn set's answer NLL; no reference, no retain terms, no clipping."""

    def forget_term(self, model, ref, b):
        return self.nll(model, b.forget)

    def phases(self) -> tuple[Phase, ...]:
        return (Phase(retain=False, regularise=False, clip=False),)
