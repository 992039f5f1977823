"""Unlearning methods of the vision family: one module each, ``run(exp, prepared, report) -> model``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from otu.registry import Reporter
    from otu.spec import Experiment
    from otu.vision.prepare import Prepared

Method = Callable[["Experiment", "Prepared", "Reporter"], "nn.Module"]


def method(name: str) -> Method:
    """The ``run`` function of ``otu.vision.methods.<name>``."""
    return import_module(f"otu.vision.methods.{name}").run
