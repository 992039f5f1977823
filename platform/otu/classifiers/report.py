"""How a family's loop reports a step to the platform's :class:`~otu.family.Reporter`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otu.family import Reporter


def report_step(reporter: Reporter, step: int, metrics: Mapping[str, float], model: Any) -> None:
    """``on_step``, then ``on_checkpoint`` with the live ``model`` if the reporter wants this step."""
    reporter.on_step(step, metrics)
    if reporter.wants_checkpoint(step):
        reporter.on_checkpoint(step, model)
