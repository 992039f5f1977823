"""Environment checks of the vision family (run once, in the driver)."""

from __future__ import annotations

from otu.errors import SpecError
from otu.family import RunContext
from otu.vision.data import check_request
from otu.vision.spec import VisionJob


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
    job.eval.membership.check_forget_size(forget, "images")
