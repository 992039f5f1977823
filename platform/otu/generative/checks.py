"""Environment checks of the generative family (run once, in the driver)."""

from __future__ import annotations

from otu.errors import SpecError
from otu.family import RunContext
from otu.generative.data import check_forget_class, load_images
from otu.generative.models import check_checkpoint
from otu.generative.spec import GenerativeJob


def check(job: GenerativeJob, ctx: RunContext) -> None:
    """The forget class exists and has the relearn attacks' shots; a generator checkpoint loads and
    outputs images of the data's shape."""
    images, labels = load_images(job.data)
    check_forget_class(job.data, labels)
    shots = int((labels == job.data.forget_class).sum())
    for attack in job.eval.robustness:
        if attack.shots > shots:
            raise SpecError(
                f"eval.robustness ({attack.label}).shots: {attack.shots} > the {shots} images of class "
                f"{job.data.forget_class}; give fewer"
            )
    checkpoint = job.model.generator.checkpoint
    if checkpoint is not None:
        check_checkpoint(checkpoint, tuple(images.shape[1:]))
