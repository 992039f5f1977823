"""Environment checks of the tabular family (run once, in the driver)."""

from __future__ import annotations

from otu.errors import SpecError
from otu.family import RunContext
from otu.tabular.spec import PointMethod, TabularJob
from otu.tabular.tables import load_table


def check(job: TabularJob, ctx: RunContext) -> None:
    """Method/source compatibility, then (file source) read and encode the table so that missing
    columns, garbage in numeric columns and degenerate groups fail before any work."""
    if isinstance(job.method, PointMethod) and job.data.source != "digits":
        raise SpecError(
            f"method.name: {job.method.name!r} forgets training points of the digits classifier and "
            f"needs task.data.source 'digits' (got {job.data.source!r})"
        )
    if job.data.source == "file":
        load_table(job.data, ctx.seed)
