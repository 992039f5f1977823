"""The spec reference: every key of an experiment (and sweep) spec with its type, default, bounds and
description, read from the pydantic models (``Field(description=...)``). ``otu spec`` prints it and
``docs/spec-reference.md`` is generated from it (``python -m otu.spec_reference > docs/spec-reference.md``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from otu.registry import family_spec, known_families
from otu.sections import Compute, Dynamics, Tracking
from otu.spec import Experiment, Param, Resources, Search, Sweep

DOC_PATH = "docs/spec-reference.md"


@dataclass(frozen=True)
class Key:
    key: str
    type: str
    default: str
    bounds: str
    description: str


@dataclass(frozen=True)
class Block:
    """One table of keys under a heading (a spec section, or one method's hyperparameters)."""

    title: str
    about: str
    keys: list[Key]


def keys(model: type[BaseModel], prefix: str) -> Iterator[Key]:
    """The keys of ``model`` as dotted paths under ``prefix``; nested sections are expanded."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        nested = _nested_model(field.annotation)
        if nested is not None:
            optional = _is_optional(field.annotation)
            yield Key(
                path,
                "section" + (" | null" if optional else ""),
                "null" if optional and field.default is None else "—",
                "",
                field.description or _doc(nested),
            )
            yield from keys(nested, path)
            continue
        yield Key(path, type_name(field.annotation), _default(field), bounds(field), field.description or "")


def family_blocks(family: str, method: str | None = None) -> list[Block]:
    """The family's sections and the hyperparameters of ``method`` (all methods when None)."""
    fam = family_spec(family)
    blocks = [
        Block("task.data", _doc(fam.data), list(keys(fam.data, "task.data"))),
        Block("task.model", _doc(fam.model), list(keys(fam.model, "task.model"))),
        Block("eval", _doc(fam.eval), list(keys(fam.eval, "eval"))),
    ]
    for name in sorted(fam.methods) if method is None else [method]:
        model = fam.methods[name].spec
        about = _doc(model)
        metrics = ", ".join(f"`{m}`" for m in fam.metrics_for(name))
        blocks.append(Block(f"method: {name}", f"{about}\n\nMetrics: {metrics}.".strip(), list(keys(model, "method"))))
    return blocks


def common_blocks() -> list[Block]:
    top = [k for k in keys(Experiment, "") if k.key in ("name", "seed")]
    task = Key("task.family", "str", "required", "", f"one of {', '.join(known_families())}")
    return [
        Block("experiment", "Keys every experiment spec has, whatever its family.", [*top, task]),
        Block("tracking", _doc(Tracking), list(keys(Tracking, "tracking"))),
        Block("compute", _doc(Compute), list(keys(Compute, "compute"))),
        Block("dynamics", _doc(Dynamics), list(keys(Dynamics, "dynamics"))),
    ]


def sweep_blocks() -> list[Block]:
    listed = [k for k in keys(Sweep, "") if not k.key.startswith(("experiment", "search", "resources"))]
    return [
        Block("sweep", _doc(Sweep), listed),
        Block("space.KEY", _doc(Param), list(keys(Param, "space.KEY"))),
        Block("search", _doc(Search), list(keys(Search, "search"))),
        Block("resources", _doc(Resources), list(keys(Resources, "resources"))),
    ]


def markdown() -> str:
    """The whole reference as Markdown: common keys, sweep keys, then each family."""
    out = [
        "# Spec reference",
        "",
        "Generated from the pydantic models by `python -m otu.spec_reference > docs/spec-reference.md`"
        " (a test fails when this file drifts); `otu spec FAMILY [METHOD]` prints the same on the"
        " terminal. Keys are dotted paths as `--set` takes them; bounds are inclusive unless `<`/`>`.",
        "",
        "## Every experiment",
        "",
    ]
    for block in common_blocks():
        out += markdown_block(block, "###")
    out += ["## Sweeps", ""]
    for block in sweep_blocks():
        out += markdown_block(block, "###")
    for family in known_families():
        out += [f"## Family `{family}`", ""]
        for block in family_blocks(family):
            out += markdown_block(block, "###")
    return "\n".join(out).rstrip() + "\n"


def markdown_block(block: Block, level: str) -> list[str]:
    lines = [f"{level} `{block.title}`", ""]
    if block.about:
        lines += [block.about.replace("``", "`"), ""]
    lines += ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
    for k in block.keys:
        cells = [f"`{k.key}`", k.type, k.default, k.bounds, k.description]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return [*lines, ""]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


# ---------------------------------------------------------------- field introspection


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(_literal(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list, tuple, dict):
        inner = ", ".join("…" if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, attr, None) if isinstance(meta, at.BaseMetadata) else None
            if value is not None:
                parts.append(f"{sign} {value}")
        if isinstance(meta, at.MinLen):
            parts.append(f"length ≥ {meta.min_length}")
        if isinstance(meta, at.MaxLen):
            parts.append(f"length ≤ {meta.max_length}")
        pattern = getattr(meta, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, BaseModel):
        return "—"
    return repr(value)


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else _value(value)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel) and c is not BaseModel]
    return models[0] if len(models) == 1 else None


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def _doc(model: type[BaseModel]) -> str:
    """The model's own docstring (not one inherited from a base class)."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.split())


if __name__ == "__main__":
    print(markdown(), end="")
