"""``trials.parquet``: one row per trial, rewritten atomically each time a trial finishes.

Rows are keyed by ``trial_id``: writing a trial again (a retry, a resumed sweep) replaces its row,
so the table never holds duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from otu.cache import replace_file
from otu.errors import DataError, first_line

TRIALS_FILE = "trials.parquet"


class TrialsTable:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> pd.DataFrame:
        if not self.path.is_file():
            return pd.DataFrame(columns=["trial_id", "status"])
        try:
            table = pd.read_parquet(self.path)
        except (OSError, ValueError, pa.ArrowException) as err:
            raise DataError(f"{self.path}: not a readable trials table ({first_line(err)})") from None
        if not {"trial_id", "status"} <= set(table.columns):
            raise DataError(f"{self.path}: not a trials table (no trial_id/status columns)")
        return table

    def upsert(self, row: Mapping[str, Any]) -> None:
        table = self.read()
        table = table[table["trial_id"] != row["trial_id"]]
        new = pd.DataFrame([dict(row)])
        table = _one_type_per_column(new if table.empty else pd.concat([table, new], ignore_index=True))
        replace_file(self.path, lambda tmp: table.to_parquet(tmp, index=False))

    def keep_finished(self) -> pd.DataFrame:
        """Drop the rows of trials that did not finish (they will be run again); return the rest."""
        table = self.read()
        finished = table[table["status"] == "TERMINATED"]
        if len(finished) < len(table):
            replace_file(self.path, lambda tmp: finished.to_parquet(tmp, index=False))
        return finished

    def finished_ids(self) -> set[str]:
        table = self.read()
        return set(table.loc[table["status"] == "TERMINATED", "trial_id"])


def _one_type_per_column(table: pd.DataFrame) -> pd.DataFrame:
    """Parquet columns hold one type: a knob whose values mix types (``choice: [1, "a"]``) is kept as text."""
    for col in table.select_dtypes(include="object").columns:
        kinds = {type(v) for v in table[col] if v is not None and not pd.isna(v)}
        if len(kinds) > 1:
            table[col] = table[col].map(lambda v: v if v is None or pd.isna(v) else str(v))
    return table
