"""Tables and digits as the tabular family sees them: features, target, sensitive group, splits.

A CSV/Parquet table is checked column by column (every error names the column and a bad value),
split into train/test seeded and stratified by the sensitive group (and the target where every
group×class cell allows it), numeric columns standardised with the training split's statistics,
categorical ones one-hot encoded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from otu.classifiers.digits import load_digits
from otu.errors import DataError
from otu.tabular.spec import TabularData


@dataclass(frozen=True)
class Features:
    """Feature matrices (rows = samples) of the train and test splits."""

    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class FeatureTask:
    """What feature unlearning works on: features, integer-coded target and sensitive group."""

    features: Features
    y_train: np.ndarray
    y_test: np.ndarray
    z_train: np.ndarray
    z_test: np.ndarray
    classes: tuple[str, ...]
    groups: tuple[str, ...]
    feature_names: tuple[str, ...]
    seed: int
    """The seed of the split (and of the evaluation's classifiers)."""


MAX_CELL = 1e150
"""Largest numeric cell: standardising and covariances square the values."""


def read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"task.data.path: file not found: {path}")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                names = next(csv.reader(f), [])  # as written: pandas renames a repeated name
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
            names = list(map(str, frame.columns))
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"task.data.path: cannot read {path}: {err}") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # pandas would rename the second one ("age.1") and a spec could name the wrong one
        raise DataError(f"task.data.path: {path} has duplicate column name(s) {repeated}")
    return frame


def load_table(data: TabularData, seed: int) -> FeatureTask:
    """Read, check, split and encode the table named by ``data`` (source ``file``)."""
    path = Path(data.path or "")
    frame = read_frame(path)
    if frame.empty:
        raise DataError(f"task.data.path: {path} has no rows")
    names = list(map(str, frame.columns))
    frame.columns = names
    for field in ("target", "sensitive"):
        column = getattr(data, field)
        if column not in names:
            raise DataError(f"task.data.{field}: column {column!r} not in {path}; available: {', '.join(names)}")
    features = data.columns or [c for c in names if c not in (data.target, data.sensitive)]
    absent = [c for c in [*features, *data.categorical] if c not in names]
    if absent:
        raise DataError(
            f"task.data.columns: column(s) {', '.join(map(repr, absent))} not in {path}; available: {', '.join(names)}"
        )
    if not features:
        raise DataError(f"task.data: {path} has no feature columns besides target and sensitive")
    for column in [data.target, data.sensitive, *features]:
        _no_missing(frame[column], str(column))
    y, classes = _codes(frame[data.target], "target", str(data.target), "classes")
    z, groups = _codes(frame[data.sensitive], "sensitive", str(data.sensitive), "groups")
    numeric = [c for c in features if c not in data.categorical]
    values = {c: _numeric(frame[c], c) for c in numeric}

    train, test = split(y, z, data.test_fraction, seed)
    counts = np.bincount(z[train], minlength=len(groups))
    if counts.min() < 2:  # a group covariance needs two rows
        raise DataError(
            f"task.data.sensitive: group {groups[int(counts.argmin())]!r} keeps {int(counts.min())} "
            f"training row(s) after the split (test_fraction={data.test_fraction}); each needs ≥ 2"
        )
    blocks: list[Features] = []
    feature_names = list(numeric)
    if numeric:
        x = np.stack([values[c] for c in numeric], axis=1)
        blocks.append(standardise(x[train], x[test]))
    if data.categorical:
        dummies = pd.get_dummies(frame[data.categorical].astype(str), prefix_sep="=", dtype=float)
        onehot = dummies.to_numpy()
        blocks.append(Features(onehot[train], onehot[test]))
        feature_names.extend(map(str, dummies.columns))
    x_train = np.concatenate([b.train for b in blocks], axis=1)
    x_test = np.concatenate([b.test for b in blocks], axis=1)
    return FeatureTask(
        features=Features(x_train, x_test),
        y_train=y[train],
        y_test=y[test],
        z_train=z[train],
        z_test=z[test],
        classes=classes,
        groups=groups,
        feature_names=tuple(feature_names),
        seed=seed,
    )


def split(y: np.ndarray, z: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, test)`` row indices, stratified by group × class where the cells allow it,
    else by group."""
    rows = np.arange(len(y))
    cells = z * (int(y.max()) + 1) + y
    try:
        train, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=cells)
    except ValueError:
        try:
            train, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=z)
        except ValueError as err:
            raise DataError(
                f"task.data.test_fraction: cannot split {len(y)} rows stratified by group "
                f"(test_fraction={test_fraction}): {err}"
            ) from None
    return np.sort(train), np.sort(test)


def _no_missing(column: pd.Series, name: str) -> None:
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"task.data: column {name!r} has {int(missing.sum())} missing value(s) (first at row "
            f"{int(np.flatnonzero(missing)[0])}, 0-based); fill or drop them, otu does not impute"
        )


def _codes(column: pd.Series, field: str, name: str, what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of a label column (sorted values) and the value names; ≥ 2 distinct values,
    each on ≥ 2 rows."""
    values, codes, counts = np.unique(column.astype(str).to_numpy(), return_inverse=True, return_counts=True)
    if len(values) < 2:
        raise DataError(
            f"task.data.{field}: column {name!r} has a single value {values[0]!r}; it needs two or more {what}"
        )
    if counts.min() < 2:
        raise DataError(
            f"task.data.{field}: value {values[counts.argmin()]!r} of column {name!r} occurs on "
            f"{int(counts.min())} row; each of the {what} needs ≥ 2 rows"
        )
    return codes.astype(np.int64), tuple(values.tolist())


def _numeric(column: pd.Series, name: str) -> np.ndarray:
    parsed = pd.to_numeric(column, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"task.data: column {name!r} must be numeric (it is not in task.data.categorical) but "
            f"row {row} (0-based) holds {column.iloc[row]!r}; fix it or list the column in categorical"
        )
    values = parsed.to_numpy(dtype=np.float64)
    bad = ~(np.abs(values) <= MAX_CELL)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"task.data: column {name!r} row {row} (0-based) holds {values[row]!r}; numeric cells must be "
            f"finite and within ±{MAX_CELL:g} (their squares must stay finite)"
        )
    return values


# ---------------------------------------------------------------- digits


@dataclass(frozen=True)
class DigitsSplits:
    """Digits images and labels, disjoint forget / retain / test indices, the derived ink groups."""

    images: torch.Tensor
    labels: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor
    test: torch.Tensor
    ink: np.ndarray
    """1 where an image's mean pixel intensity is above the median image's, else 0."""

    @property
    def train(self) -> torch.Tensor:
        return torch.sort(torch.cat([self.forget, self.retain])).values


def digits_splits(data: TabularData, seed: int) -> DigitsSplits:
    """Test split stratified by digit; ``forget_fraction`` of the training images of
    ``forget_class`` (at least one) are the forget set, the other training images the retain set."""
    images, labels = load_digits()
    rows = np.arange(len(labels))
    train, test = train_test_split(rows, test_size=data.test_fraction, random_state=seed, stratify=labels.numpy())
    pool = train[labels.numpy()[train] == data.forget_class]
    n_forget = max(1, round(data.forget_fraction * len(pool)))
    forget = np.random.default_rng(seed).choice(pool, n_forget, replace=False)
    ink = images.mean(dim=(1, 2, 3)).numpy()
    return DigitsSplits(
        images=images,
        labels=labels,
        forget=_index(forget),
        retain=_index(np.setdiff1d(train, forget)),
        test=_index(test),
        ink=(ink > np.median(ink)).astype(np.int64),
    )


def _index(rows: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.sort(rows), dtype=torch.int64)


def standardise(train: np.ndarray, test: np.ndarray) -> Features:
    """Both splits centred and scaled by the training split's per-column mean and std."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return Features((train - mean) / std, (test - mean) / std)
