"""Atomic writes for the on-disk cache (prepared data, reference models) and result files: a reader
sees the old entry or the new one, never part of one."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_dir)`` and rename the directory to ``final``, so parallel trials never see a
    half-written entry; if a concurrent writer got there first, keep theirs."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        write(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_file(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_file)`` beside ``final``, then rename the file over ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
