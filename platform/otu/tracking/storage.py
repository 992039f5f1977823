"""Where a run's or sweep's directory lives: a local path, or a URI pyarrow and Ray understand.

A URI (``s3://bucket/dir``, ``gs://bucket/dir``, ``file:///shared/dir``) is written through a local
staging directory that is copied to the URI when the command ends, successfully or not; Ray Tune and
Ray Train write their own state there directly (``storage_path``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otu.errors import SpecError


def is_uri(location: str) -> bool:
    return "://" in location


SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")
"""Storage URI schemes pyarrow's filesystems (and so Ray's ``storage_path``) understand."""


def check_uri(location: str, flag: str = "--out") -> None:
    """Raise :class:`SpecError` unless ``location`` is a URI of a storage scheme pyarrow knows
    (checked without contacting the store: a laptop may not reach the cluster's bucket)."""
    scheme, _, rest = location.partition("://")
    if scheme not in SCHEMES or not rest.strip("/"):
        raise SpecError(
            f"{flag}: cannot use {location!r} as storage (a path, or a URI with a path "
            f"and one of the schemes {', '.join(SCHEMES)})"
        )


@contextmanager
def staged(location: str, name: str) -> Iterator[Path]:
    """A local directory for ``location``: the path itself, or a staging copy uploaded at the end."""
    if not is_uri(location):
        yield Path(location)
        return
    from pyarrow import fs

    stage = Path(tempfile.mkdtemp(prefix=f"otu-{name}-"))
    try:
        yield stage
    finally:
        target, path = fs.FileSystem.from_uri(location)
        target.create_dir(path, recursive=True)
        fs.copy_files(str(stage), path, source_filesystem=fs.LocalFileSystem(), destination_filesystem=target)
        shutil.rmtree(stage, ignore_errors=True)
