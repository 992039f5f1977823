"""Environment checks of the vision family (run once, in the driver)."""

from __future__ import annotations

from otu.errors import SpecError
from otu.family import RunContext
from otu.vision.data import check_request
from otu.vision.spec import VisionJob

MIN_ULIRA_FORGET = 4
"""Forget images U-LiRA needs (each half holds half of them; a method needs a batch of two)."""


def check(job: VisionJob, ctx: RunContext) -> None:
    """Read the data's labels/identities up front: file, columns, identities, non-empty sets; each
    relearn attack leaves forget images to score; U-LiRA's halves each hold forget images to unlearn."""
    forget = check_request(job.data, ctx.seed)
    for i, attack in enumerate(job.eval.robustness):
        if attack.shots >= forget:
            raise SpecError(
                f"eval.robustness.{i}.shots: {attack.shots} of the {forget} forget images leaves none to "
                "score; give fewer"
            )
    if job.eval.membership.attack == "ulira" and forget < MIN_ULIRA_FORGET:
        raise SpecError(
            f"eval.membership.attack: U-LiRA's shadows each unlearn half of the forget images; "
            f"{forget} forget images leave halves with too few: give at least {MIN_ULIRA_FORGET}"
        )
