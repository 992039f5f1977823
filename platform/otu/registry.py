"""Name → method family. The platform reaches families only through this module (the contract a
family implements is :mod:`otu.family`)."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING

from otu.errors import OtuError

if TYPE_CHECKING:
    from otu.family import Family, FamilySpec

FAMILIES: dict[str, str] = {
    "vision": "otu.vision",
    "llm": "otu.llm",
    "tabular": "otu.tabular",
    "generative": "otu.generative",
}

EXTRAS: dict[str, tuple[str, ...]] = {
    "llm": ("transformers", "tokenizers", "datasets", "deepspeed", "rouge_score", "peft"),
}
"""Family → the modules of its pip extra (``otu[<family>]``); families not listed need none."""


def known_families() -> list[str]:
    return sorted(FAMILIES)


def family_spec(name: str) -> FamilySpec:
    """The family's :class:`~otu.family.FamilySpec` (imports its pydantic-only spec module)."""
    return import_module(f"{FAMILIES[name]}.spec").SPEC


def require_extra(name: str) -> None:
    """Raise a one-line :class:`OtuError` if the family's pip extra is not installed."""
    if any(find_spec(module) is None for module in EXTRAS.get(name, ())):
        raise OtuError(f"the {name} family needs the '{name}' extra: pip install 'otu[{name}]'")


def family_api(name: str) -> Family:
    """The family's ``FAMILY`` object (imports its implementation)."""
    require_extra(name)
    return import_module(f"{FAMILIES[name]}.family").FAMILY
