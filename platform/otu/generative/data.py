"""Images and the class-forgetting request: all digits train the original generator and classifiers;
the retained classes' images are the target marginal of unlearning and the u-FID reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from otu.classifiers.digits import load_digits
from otu.errors import SpecError
from otu.generative.spec import GenerativeData


@dataclass(frozen=True)
class ClassData:
    """All images (``N×C×H×W`` in [0, 1]) and labels, and the class to forget."""

    images: torch.Tensor
    labels: torch.Tensor
    forget_class: int
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def retained(self) -> torch.Tensor:
        """Images of every class but the forgotten one."""
        return self.images[self.labels != self.forget_class]


def load_images(data: GenerativeData) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the data source (digits: ``N×1×8×8`` float32, int64 labels 0–9)."""
    return load_digits()


def load_class_data(data: GenerativeData) -> ClassData:
    images, labels = load_images(data)
    check_forget_class(data, labels)
    return ClassData(images, labels, data.forget_class, int(labels.max()) + 1)


def check_forget_class(data: GenerativeData, labels: torch.Tensor) -> None:
    """SpecError unless ``forget_class`` is one of the data's classes."""
    classes = sorted(int(c) for c in labels.unique())
    if data.forget_class not in classes:
        raise SpecError(
            f"task.data.forget_class: {data.forget_class} is not a class of the {data.source} "
            f"data; classes: {', '.join(map(str, classes))}"
        )
