"""The on-disk cache of prepared data and reference models, shared by the families."""

from __future__ import annotations

import os
import shutil
import tempfile
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
