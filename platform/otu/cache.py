"""Atomic, verified writes for the on-disk cache (prepared data, reference models) and result files:
a reader sees the old entry or the new one, never part of one, and never a tampered or truncated one.
Entries are named by :func:`content_hash` of what they are built from.

Every cache entry carries SHA-256 digests written with it (``.otu-digest.json`` inside a folder
entry, ``NAME.sha256`` beside a file entry) and checked on load: an entry that does not match (a
checkpoint copied over, an edited JSON, a truncated file, an entry from before digests) is rebuilt
with a warning. Temporary files carry their writer's pid and host, so those of killed writers are
removed by the next writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIGEST_FILE = ".otu-digest.json"
log = logging.getLogger("otu.cache")
_OWNER = re.compile(r"~(\d+)@(.+?)~")


def content_hash(obj: Any) -> str:
    """Stable short hash of JSON-able content (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """``final`` as a verified folder entry: kept if its digests match, else (re)built by
    ``build(tmp_dir)`` and moved into place atomically."""
    remove_stale_temps(final.parent)
    if final.exists() and not _dir_matches(final):
        log.warning("cache entry %s failed its digest check (changed or truncated); rebuilding it", final)
        _remove(final)
    if not final.is_dir():
        write_atomically(final, build)
    return final


def verified_file(final: Path) -> bool:
    """Whether ``final`` exists and matches the digest written beside it; a mismatching entry is
    removed with a warning (so the caller rebuilds it)."""
    remove_stale_temps(final.parent)
    if not final.exists():
        return False
    sidecar = _sidecar(final)
    if final.is_file() and sidecar.is_file() and sidecar.read_text().strip() == file_digest(final):
        return True
    log.warning("cache entry %s failed its digest check (changed or truncated); rebuilding it", final)
    _remove(final)
    sidecar.unlink(missing_ok=True)
    return False


def write_verified_file(final: Path, write: Callable[[Path], object]) -> None:
    """:func:`replace_file`, then the digest beside it (a reader checks both with :func:`verified_file`)."""
    replace_file(final, write)
    replace_file(_sidecar(final), lambda tmp: tmp.write_text(file_digest(final) + "\n"))


def write_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_dir)``, record the digests of what it wrote and rename the folder to
    ``final``, so parallel trials never see a half-written entry; if a concurrent writer got there
    first, keep theirs."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{_owner()}", dir=final.parent))
    try:
        write(tmp)
        (tmp / DIGEST_FILE).write_text(json.dumps(_dir_digests(tmp), indent=1, sort_keys=True))
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_file(final: Path, write: Callable[[Path], object]) -> None:
    """Run ``write(tmp_file)`` beside ``final``, then rename the file over ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{_owner()}{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temporary entries in ``folder`` whose writer (a process on this host) is gone."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for entry in folder.iterdir():
        match = _OWNER.search(entry.name) if entry.name.startswith(".") else None
        if match and match.group(2) == host and not pid_alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _dir_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): file_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != DIGEST_FILE
    }


def _dir_matches(root: Path) -> bool:
    try:
        recorded = json.loads((root / DIGEST_FILE).read_text())
        return isinstance(recorded, dict) and recorded == _dir_digests(root)
    except (OSError, ValueError):
        return False


def _sidecar(final: Path) -> Path:
    return final.with_name(final.name + ".sha256")


def _owner() -> str:
    return f"~{os.getpid()}@{socket.gethostname()}~"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
