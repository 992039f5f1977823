"""Environment checks of the vision family (run once, in the driver)."""

from __future__ import annotations

from otu.family import RunContext
from otu.vision.data import check_request
from otu.vision.spec import VisionJob


def check(job: VisionJob, ctx: RunContext) -> None:
    """Read the data's labels/identities up front: file, columns, identities, non-empty sets."""
    check_request(job.data, ctx.seed)
