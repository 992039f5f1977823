"""Unlearning methods of the generative family: name → ``run(exp, prepared, report) -> generator``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otu.generative.methods import finetune, forget_cost, uot_unlearn

METHODS: dict[str, Callable[..., Any]] = {
    "uot_unlearn": uot_unlearn.run,
    "forget_cost": forget_cost.run,
    "finetune": finetune.run,
}


def method(name: str) -> Callable[..., Any]:
    return METHODS[name]
