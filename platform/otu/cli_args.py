"""Argument checks shared by the ``otu`` command line and the families' ``otu data`` commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from otu.errors import SpecError
from otu.sections import MAX_SEED


def seed_arg(text: str) -> int:
    """argparse type of a ``--seed``: an integer numpy and torch take."""
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}")
    return value


def writable_dir(path: Path, what: str) -> Path:
    """Check, creating nothing, that ``path`` is (or can be made) a writable directory."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SpecError(f"{what}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError(f"{what}: {probe} is not writable")
    return path


def add_overrides(parser: argparse.ArgumentParser, help: str = "override a dotted spec key (repeatable)") -> None:
    """The ``--set KEY=VALUE`` option (repeatable) into ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)
