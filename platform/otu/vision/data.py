"""Image data and forget requests: scikit-learn digits or a Parquet/NPZ table with an identity column.

``make_splits`` turns a :class:`VisionData` section and a seed into disjoint forget / retain / val /
test index sets over one image tensor. Test is for the final report only; val (validation) is what
training decisions — DLFD's forgetting monitor, checkpoint selection — may look at.

* Digits (no identities): stratified test and val splits (``test_fraction`` / ``val_fraction`` of
  each label), then ``forget_size`` (or ``forget_fraction`` of the training part) random training
  samples.
* File (identity column): every sample of the named identities is forgotten (or ``forget_size`` /
  ``forget_fraction`` random training samples); test and val are whole identities drawn from the
  others, so unseen identities are disjoint from retain and forget (as MUFAC's are).
* File with a split column: each row's part is the column's value (``forget``, ``retain``, ``val``,
  ``test``) — a published partition taken as it is, rows in file order.

Images are then normalised per channel when ``normalize_mean``/``normalize_std`` are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otu.classifiers.digits import load_digits
from otu.errors import DataError
from otu.vision.spec import VisionData

FILE_SUFFIXES = (".parquet", ".npz")
PARTS = ("forget", "retain", "val", "test")


@dataclass(frozen=True)
class Splits:
    """All images and labels, and disjoint index sets into them."""

    images: torch.Tensor
    labels: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    num_classes: int

    def part(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``forget``, ``retain``, ``val``, ``test`` or ``train`` (forget ∪
        retain)."""
        idx = torch.cat([self.forget, self.retain]) if name == "train" else getattr(self, name)
        return self.images[idx], self.labels[idx]


def make_splits(data: VisionData, seed: int) -> Splits:
    """Seeded forget / retain / val / test splits for the data section (see the module docstring)."""
    if data.source == "digits":
        images, labels = load_digits()
        groups = None
    else:
        images, labels, groups = load_table(data)
    parts = split_indices(data, labels.numpy(), groups, seed)
    forget, retain, val, test = (torch.as_tensor(p, dtype=torch.int64) for p in parts)
    images = normalize(images, data)
    return Splits(images, labels, forget, retain, val, test, num_classes=int(labels.max()) + 1)


def normalize(images: torch.Tensor, data: VisionData) -> torch.Tensor:
    """(x − mean)/std per channel (``images`` unchanged without ``normalize_mean``)."""
    if data.normalize_mean is None or data.normalize_std is None:
        return images
    channels = images.shape[1]
    if len(data.normalize_mean) not in (1, channels):
        raise DataError(
            f"task.data.normalize_mean: {len(data.normalize_mean)} values for images of {channels} channel(s)"
        )
    mean = torch.tensor(data.normalize_mean, dtype=images.dtype)[:, None, None]
    return (images - mean) / torch.tensor(data.normalize_std, dtype=images.dtype)[:, None, None]


def split_indices(
    data: VisionData, labels: np.ndarray, groups: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ``(forget, retain, val, test)`` indices; DataError if forget, retain or val would be
    empty. ``groups``: the identity column's values, or the split column's with ``split_column``."""
    if data.split_column is not None:
        assert groups is not None
        return _named_parts(data, groups)
    identities = groups
    rng = np.random.default_rng(seed)
    pool = np.arange(len(labels))
    if data.forget_identities is not None:
        assert identities is not None
        pool = np.flatnonzero(~np.isin(identities, data.forget_identities))
    if identities is None:
        test, rest = _split_test(pool, labels, data.test_fraction, rng)
        val, train = _split_test(rest, labels, data.val_fraction / (1 - data.test_fraction), rng)
    else:
        n = len(pool)
        test, rest = _split_groups(pool, identities, round(data.test_fraction * n), rng)
        val, train = _split_groups(rest, identities, round(data.val_fraction * n), rng)
    if data.forget_identities is not None:
        forget, retain = np.flatnonzero(np.isin(identities, data.forget_identities)), train
    else:
        n_forget = data.forget_size or max(1, round((data.forget_fraction or 0) * len(train)))
        train = rng.permutation(train)
        forget, retain = np.sort(train[:n_forget]), np.sort(train[n_forget:])
    if len(retain) == 0 or len(forget) == 0 or len(val) == 0:
        request = (
            f"forget_identities={data.forget_identities}"
            if data.forget_identities is not None
            else f"forget_size={data.forget_size}, forget_fraction={data.forget_fraction}"
        )
        raise DataError(
            f"task.data: the forget request ({request}) leaves {len(forget)} forget, "
            f"{len(retain)} retain and {len(val)} val samples of {len(labels)} "
            f"(test_fraction={data.test_fraction}, val_fraction={data.val_fraction}); "
            "all must be non-empty"
        )
    return forget, retain, val, test


def _named_parts(data: VisionData, names: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows of each part named by the split column; DataError on another value or an empty part."""
    names = names.astype(str)
    unknown = sorted(set(names.tolist()) - set(PARTS))
    if unknown:
        raise DataError(
            f"task.data.split_column: {data.split_column!r} holds {unknown[:5]}; its values must be {', '.join(PARTS)}"
        )
    parts = tuple(np.flatnonzero(names == part) for part in PARTS)
    empty = [part for part, rows in zip(PARTS, parts, strict=True) if len(rows) == 0]
    if empty:
        raise DataError(f"task.data.split_column: no {' / '.join(empty)} rows in {data.split_column!r}")
    forget, retain, val, test = parts
    return forget, retain, val, test


def _split_test(
    pool: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(held, rest)`` of ``pool``: ``fraction`` of each label's samples are held out (at least one
    per label with ≥ 2 samples)."""
    held: list[np.ndarray] = []
    for label in np.unique(y[pool]):
        members = rng.permutation(pool[y[pool] == label])
        n_held = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        held.append(members[:n_held])
    held_idx = np.sort(np.concatenate(held)) if held else pool[:0]
    return held_idx, np.setdiff1d(pool, held_idx)


def _split_groups(
    pool: np.ndarray, identities: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(held, rest)`` of ``pool`` by whole identities: shuffled identities are held out until at
    least ``size`` samples (at least one identity, never all of them)."""
    ids = rng.permutation(np.unique(identities[pool]))
    counts = np.array([np.sum(identities[pool] == i) for i in ids])
    n_ids = min(int(np.searchsorted(np.cumsum(counts), max(size, 1))) + 1, len(ids) - 1)
    held = np.isin(identities[pool], ids[:n_ids])
    return np.sort(pool[held]), np.sort(pool[~held])


# ---------------------------------------------------------------- Parquet / NPZ tables


def read_columns(path: Path, required: list[str], read: list[str]) -> dict[str, Any]:
    """Check that ``required`` columns exist in a ``.parquet``/``.npz`` file; return the ``read``
    ones (arrays for NPZ, Python lists for Parquet). Raises DataError naming the problem."""
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"task.data.path: {str(path)!r} must end in {' or '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"task.data.path: file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as table:
                available = list(table.files)
                found = {c: table[c] for c in read if c in available}
        else:
            import pyarrow.parquet as pq

            available = pq.read_schema(path).names
            present = [c for c in read if c in available]
            table = pq.read_table(path, columns=present)
            found = {c: table.column(c).to_pylist() for c in present}
    except (OSError, ValueError) as err:
        raise DataError(f"task.data.path: cannot read {path}: {err}") from None
    missing = [c for c in required if c not in available]
    if missing:
        raise DataError(
            f"task.data: column(s) {', '.join(map(repr, missing))} not in {path}; available: {', '.join(available)}"
        )
    return found


def load_table(data: VisionData) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images (``N×C×H×W`` float32; integer pixels (0–255) are scaled by 1/255), labels re-indexed to
    ``0..K-1`` (sorted), identities (or split names, see :func:`group_column`) as an array. ``H×W``
    images get one channel."""
    path = Path(data.path or "")
    columns = [data.image_column, data.label_column, group_column(data)]
    cols = read_columns(path, columns, columns)
    try:
        raw = np.asarray(cols[data.image_column])
    except ValueError:  # ragged nested lists from Parquet
        raw = np.asarray([])
    if raw.ndim == 3:
        raw = raw[:, None]
    if raw.ndim != 4 or not np.issubdtype(raw.dtype, np.number):
        raise DataError(
            f"task.data.image_column: {data.image_column!r} in {path} must hold equal-sized numeric "
            f"H×W or C×H×W images (got shape {raw.shape}, dtype {raw.dtype})"
        )
    images = raw.astype(np.float32) / (255.0 if np.issubdtype(raw.dtype, np.integer) else 1.0)
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
    if not finite.all():
        raise DataError(
            f"task.data.image_column: image {int(np.flatnonzero(~finite)[0])} (0-based row) in {path} "
            "holds a non-finite (or beyond float32) pixel"
        )
    labels, groups = _labels_groups(data, cols)
    return torch.from_numpy(images), torch.as_tensor(labels), groups


def group_column(data: VisionData) -> str:
    """The column that splits a table: ``split_column`` if given, else ``identity_column``."""
    return data.split_column or data.identity_column


def check_request(data: VisionData, seed: int) -> int:
    """Up-front data checks (no images read): a file source is readable with the image, label and
    identity (or split) columns, the named identities are present; for any source the forget, retain
    and val sets are non-empty. Returns the forget set's size."""
    if data.source == "digits":
        _, labels = load_digits()
        return len(split_indices(data, labels.numpy(), None, seed)[0])
    path = Path(data.path or "")
    cols = read_columns(
        path,
        [data.image_column, data.label_column, group_column(data)],
        [data.label_column, group_column(data)],
    )
    labels, groups = _labels_groups(data, cols)
    if len(labels) == 0:
        raise DataError(f"task.data.path: {path} has no rows")
    if data.forget_identities is not None:
        known = set(groups.tolist())
        absent = [i for i in data.forget_identities if i not in known]
        if absent:
            sample = ", ".join(map(repr, sorted(known, key=str)[:10]))
            raise DataError(
                f"task.data.forget_identities: {absent} not found in column "
                f"{data.identity_column!r} of {path}; present (first 10): {sample}"
            )
    return len(split_indices(data, labels, groups, seed)[0])


def _labels_groups(data: VisionData, cols: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(cols[data.label_column])
    groups = np.asarray(cols[group_column(data)])
    if labels.ndim != 1 or groups.ndim != 1 or len(labels) != len(groups):
        raise DataError(
            f"task.data: {data.label_column!r} and {group_column(data)!r} must be 1-D columns of "
            f"equal length (got shapes {labels.shape} and {groups.shape})"
        )
    _, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), groups
