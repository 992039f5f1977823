"""Job operations on a connected cluster: submit, follow logs to the end, list, status, stop.

Ray's client reports failures as ``RuntimeError("Request failed with status code 404: ...")``;
:func:`call` maps them to one-line :class:`ClusterError` messages naming the job and the cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from otu.cluster.client import ClusterError, Connection
from otu.cluster.submit import Submission, describe

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

T = TypeVar("T")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobFailed(ClusterError):
    """A job ended FAILED or STOPPED (``otu submit --wait`` exits non-zero with its message)."""


@dataclass(frozen=True)
class JobView:
    """One job as ``otu jobs`` shows it."""

    job_id: str
    status: str
    what: str
    entrypoint: str
    start: float | None
    end: float | None
    message: str
    results: str = ""
    """Where the job writes its run/sweep directory (``otu.results``)."""
    tracking: str = ""
    """The MLflow URI it logs to (``otu.tracking``)."""

    @property
    def duration_s(self) -> float | None:
        if self.start is None:
            return None
        return (self.end or time.time()) - self.start


def call(conn: Connection, fn: Callable[[], T], job_id: str | None = None) -> T:
    """Run a client request; turn Ray's errors into one line naming the job and the address."""
    try:
        return fn()
    except ClusterError:
        raise
    except Exception as err:  # RuntimeError / AuthenticationError / requests errors from Ray's client
        text = str(err)
        if job_id is not None and ("404" in text or "does not exist" in text):
            raise ClusterError(f"job {job_id}: no such job on {conn.address} (see `otu jobs list`)") from None
        first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
        raise ClusterError(f"{conn.address}: {first[:300]}") from None


def submit(client: JobSubmissionClient, conn: Connection, sub: Submission, submission_id: str | None = None) -> str:
    return call(
        conn,
        lambda: client.submit_job(
            entrypoint=sub.entrypoint,
            runtime_env=sub.runtime_env,
            metadata=sub.metadata,
            submission_id=submission_id,
        ),
    )


def follow(
    client: JobSubmissionClient, conn: Connection, job_id: str, write: Callable[[str], Any], poll_s: float = 1.0
) -> str:
    """Stream the job's logs until it ends; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    call(conn, lambda: client.get_job_status(job_id), job_id)  # a bad id fails here, in one line
    call(conn, lambda: asyncio.run(tail()), job_id)
    state = str(call(conn, lambda: client.get_job_status(job_id), job_id))
    while state not in TERMINAL:  # the stream may close a moment before the status is final
        time.sleep(poll_s)
        state = str(call(conn, lambda: client.get_job_status(job_id), job_id))
    return state


def raise_for_outcome(client: JobSubmissionClient, conn: Connection, job_id: str, status: str) -> None:
    if status == "SUCCEEDED":
        return
    info = call(conn, lambda: client.get_job_info(job_id), job_id)
    message = (info.message or "").strip().splitlines()
    raise JobFailed(
        f"job {job_id} {status}: {message[-1] if message else 'no message'} "
        f"(full logs: otu jobs logs {job_id} --address {conn.address})"
    )


def list_jobs(client: JobSubmissionClient, conn: Connection) -> list[JobView]:
    jobs = call(conn, client.list_jobs)
    views = [view(job) for job in jobs if job.submission_id]
    return sorted(views, key=lambda v: v.start or 0.0, reverse=True)


def status(client: JobSubmissionClient, conn: Connection, job_id: str) -> JobView:
    return view(call(conn, lambda: client.get_job_info(job_id), job_id))


def logs(client: JobSubmissionClient, conn: Connection, job_id: str) -> str:
    return call(conn, lambda: client.get_job_logs(job_id), job_id)


def stop(client: JobSubmissionClient, conn: Connection, job_id: str, wait_s: float = 30.0, poll_s: float = 0.5) -> str:
    """Ask the job to stop and wait (up to ``wait_s``) for a terminal status; return it."""
    call(conn, lambda: client.stop_job(job_id), job_id)
    deadline = time.monotonic() + wait_s
    state = status(client, conn, job_id).status
    while state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = status(client, conn, job_id).status
    return state


def view(job: JobDetails) -> JobView:
    ms = 1000.0
    return JobView(
        job_id=job.submission_id or job.job_id or "",
        status=str(job.status),
        what=describe(job.metadata or {}),
        entrypoint=job.entrypoint,
        start=job.start_time / ms if job.start_time else None,
        end=job.end_time / ms if job.end_time else None,
        message=job.message or "",
        results=(job.metadata or {}).get("otu.results", ""),
        tracking=(job.metadata or {}).get("otu.tracking", ""),
    )
