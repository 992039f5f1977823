"""Paths a user names in a spec or flag, resolved once in the driver.

A spec field that names a file or directory is typed :data:`LocalPath` (or :data:`PathOrHubId` where a
Hugging Face hub id is also accepted). :func:`resolve_paths` makes every such field absolute against
the directory the user ran ``otu`` from, before the experiment crosses a process boundary (Tune
trials, Ray Train workers, evaluation actors, DeepSpeed ranks), whose working directories differ.
``otu submit`` does not resolve: the job resolves against its own uploaded working directory.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel


@dataclass(frozen=True)
class PathRef:
    """Marks a ``str`` spec field as a path; ``hub``: a value that is no local path is a hub id."""

    hub: bool = False


LocalPath = Annotated[str, PathRef()]
PathOrHubId = Annotated[str, PathRef(hub=True)]

M = TypeVar("M", bound=BaseModel)


def absolute(value: str, base: Path, hub: bool = False) -> str:
    """``value`` as an absolute path against ``base`` (``~`` expanded); a hub id stays as it is.

    With ``hub``, a value is a path when it exists under ``base`` or looks like one (starts with
    ``.``, ``/`` or ``~``); otherwise (e.g. ``meta-llama/Llama-3.1-8B-Instruct``) it is a hub id."""
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    candidate = os.path.normpath(os.path.join(base, expanded))
    if hub and not value.startswith((".", "~")) and not os.path.exists(candidate):
        return value
    return candidate


def resolve_paths(model: M, base: Path) -> M:
    """A copy of ``model`` whose path fields (at any depth) are absolute against ``base``."""
    updates: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        ref = _path_ref(info.annotation, info.metadata)
        if ref is not None and isinstance(value, str):
            updates[name] = absolute(value, base, ref.hub)
        elif ref is not None and isinstance(value, list):  # a list of paths (task.model.retain_paths)
            updates[name] = [absolute(item, base, ref.hub) for item in value]
        elif isinstance(value, BaseModel):
            updates[name] = resolve_paths(value, base)
    return model.model_copy(update=updates) if updates else model


def path_fields(model: BaseModel, prefix: str = "") -> dict[str, str]:
    """Dotted key → value of every path field set in ``model`` (hub ids included)."""
    found: dict[str, str] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        ref = _path_ref(info.annotation, info.metadata)
        if ref is not None and isinstance(value, str):
            found[key] = value
        elif ref is not None and isinstance(value, list):
            found.update({f"{key}.{i}": item for i, item in enumerate(value)})
        elif isinstance(value, BaseModel):
            found.update(path_fields(value, f"{key}."))
    return found


def elsewhere(model: BaseModel, work: Path) -> dict[str, str]:
    """Path fields whose files this machine cannot check: hub ids, and paths outside ``work`` that do
    not exist here (a cluster's ``/models/…``) — the cache directory aside, which is created where the
    run is. A file that exists on this machine is checked, wherever it lies."""
    found = {}
    for key, value in path_fields(resolve_paths(model, work)).items():
        hub_id = not os.path.isabs(value)
        absent_outside = os.path.isabs(value) and not Path(value).is_relative_to(work) and not Path(value).exists()
        if (hub_id or absent_outside) and not key.endswith("tracking.cache_dir"):
            found[key] = value
    return found


def sqlite_uri(uri: str, base: Path) -> str:
    """A ``sqlite:///relative.db`` URI made absolute against ``base``; other URIs unchanged."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + absolute(uri.removeprefix(prefix), base)


def _path_ref(annotation: Any, metadata: list[Any]) -> PathRef | None:
    for item in metadata:
        if isinstance(item, PathRef):
            return item
    if typing.get_origin(annotation) is Annotated:
        return _path_ref(typing.get_args(annotation)[0], list(annotation.__metadata__))
    if typing.get_origin(annotation) is list:  # list[LocalPath]: each item a path
        return _path_ref(typing.get_args(annotation)[0], [])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _path_ref(arg, [])
            if found is not None:
                return found
    return None
