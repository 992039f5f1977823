"""The training recipe of a run: the method knobs left None, filled with the data layout's values.

``layout: elude`` takes the OPT-OUT authors' values (brightjade/Opt-Out); ``layout: tofu`` and
``layout: muse`` open-unlearning's, which differ from otu's only in ``nll_reduction``: ``batch_mean``, HF's
``outputs.loss`` in GradAscent / GradDiff (src/trainer/unlearn/grad_ascent.py:12-13,
grad_diff.py:26-29,49-50), NPO on per-sequence sums (src/trainer/utils.py:34-44, otu's default);
every other layout otu's:

* ``stop_after_epochs``: 2 of the 3 scheduled epochs for a method with retain / world terms or a
  regulariser, 1 for a forget term alone (evaluator.py ``EvalCallback.on_epoch_end``); otherwise
  the whole schedule.
* ``nll_reduction``: ``batch_mean``, HF's token mean over the micro-batch (trainer.py takes
  ``model(**inputs)[0]`` for every NLL term); otherwise ``sequence_mean``.
* ``retain_sampling``: ``paired``, retain and world each ``shuffle(seed).select(range(len(forget)))``
  with item i beside forget item i (dataset.py ``CustomDataset``); otherwise ``stream``.
* ``npo_reduction`` (NPO / NPO+RT without ``reduction``): ``batch_mean``, the same HF loss inside
  NPO's log σ (trainer.py ``compute_loss``); otherwise ``sequence_sum``, the NPO paper's;
* ``clip_forget_step``: False, the forget step is ``optimizer.step()`` inside ``compute_loss``,
  before the Trainer clips (trainer.py); otherwise True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from otu.llm.spec import LLMMethod, NPOReduction, OptOut, Retaining


@dataclass(frozen=True)
class Recipe:
    """Resolved values of the layout-dependent knobs; the default instance is otu's recipe."""

    stop_after_epochs: float | None = None
    """None: the whole schedule."""
    nll_reduction: Literal["sequence_mean", "batch_mean"] = "sequence_mean"
    npo_reduction: NPOReduction = "sequence_sum"
    """NPO's NLL where the method leaves ``reduction`` None."""
    retain_sampling: Literal["stream", "paired"] = "stream"
    clip_forget_step: bool = True


OTU_RECIPE = Recipe()


def recipe_for(method: LLMMethod, layout: str) -> Recipe:
    """``method``'s knobs, each None filled with ``layout``'s value."""
    base = OTU_RECIPE
    if layout == "elude":
        base = Recipe(
            stop_after_epochs=2.0 if composite(method) else 1.0,
            nll_reduction="batch_mean",
            npo_reduction="batch_mean",
            retain_sampling="paired",
            clip_forget_step=False,
        )
    elif layout in ("tofu", "muse"):  # open-unlearning's HF loss on QA and on text chunks alike
        base = Recipe(nll_reduction="batch_mean")
    sampling = method.retain_sampling if isinstance(method, Retaining) else "stream"
    clip = method.clip_forget_step if isinstance(method, OptOut) else None
    return Recipe(
        stop_after_epochs=base.stop_after_epochs if method.stop_after_epochs is None else method.stop_after_epochs,
        nll_reduction=method.nll_reduction or base.nll_reduction,
        npo_reduction=base.npo_reduction,
        retain_sampling=sampling or base.retain_sampling,
        clip_forget_step=base.clip_forget_step if clip is None else clip,
    )


def composite(method: LLMMethod) -> bool:
    """Whether ``method`` adds retain / world terms or a regulariser to its forget term (the authors'
    ``+rt`` / ``+wd`` / ``+ot``)."""
    retains = isinstance(method, Retaining) and bool(method.retain_weight or method.world_weight)
    return retains or (isinstance(method, OptOut) and method.reg_weight > 0)
