"""Deliberately broken variants of the queue, each one named change, for the harness.

A mutant replaces named queries (its entries in ``sql/mutants.sql``) or methods
of ``Jobs`` or ``Worker`` (the *seams*). It is selected by name: the worker's
``--mutant NAME``, ``enqueue(..., mutant=NAME)``, or the ``REFQUEUE_MUTANT``
environment variable. The default scenario suite must catch every one.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import psycopg

from .errors import ConfigError
from .jobprocess import JobProcess
from .jobs import Claimed, Job, Jobs
from .queries import QUERIES, Queries
from .worker import Worker

#: The environment variable that selects a mutant when no name is given.
ENV_VAR = "REFQUEUE_MUTANT"

_MUTANT_QUERIES = Queries.from_files("mutants.sql")


@dataclass(frozen=True)
class Mutant:
    """One deliberate bug: a single named change to the correct queue."""

    #: what the change does, in one line
    description: str
    #: the failure case of DESIGN.md (F1..F6) whose scenarios catch it
    failure_case: str
    #: queries replaced by this mutant's ``NAME.QUERY`` entries of sql/mutants.sql
    queries: tuple[str, ...] = ()
    #: methods of ``Jobs`` replaced, by name
    jobs_methods: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    #: methods of ``Worker`` replaced, by name
    worker_methods: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def seams(self) -> list[str]:
        """The seams it changes: ``query claim``, ``Jobs.heartbeat``, ..."""
        return [
            *(f"query {name}" for name in self.queries),
            *(f"Jobs.{name}" for name in self.jobs_methods),
            *(f"Worker.{name}" for name in self.worker_methods),
        ]

    def diff(self, name: str) -> str:
        """A unified diff of each replaced query, then each replacement's docstring."""
        parts = []
        for query in self.queries:
            parts += difflib.unified_diff(
                QUERIES[query].text.splitlines(),
                _MUTANT_QUERIES[f"{name}.{query}"].text.splitlines(),
                f"query {query}",
                f"query {query} ({name})",
                lineterm="",
            )
        for owner, methods in (
            ("Jobs", self.jobs_methods),
            ("Worker", self.worker_methods),
        ):
            for method, replacement in methods.items():
                parts.append(f"{owner}.{method}: {replacement.__doc__}")
        return "\n".join(parts)


# Replacement methods ------------------------------------------------------------------


def _heartbeat_without_write(
    self: Jobs, conn: psycopg.Connection[Any], jobs: list[Job], lease_s: float
) -> set[int]:
    """Report every lease as held without extending any: leases expire mid-job."""
    return {job.id for job in jobs}


def _claim_on_worker_clock(
    self: Jobs,
    conn: psycopg.Connection[Any],
    *,
    queue: str,
    worker: str,
    limit: int,
    lease_s: float,
) -> Claimed:
    """Claim with the lease's expiry taken from the worker's wall clock."""
    params = {
        "queue": queue,
        "worker": worker,
        "limit": limit,
        "lease_s": lease_s,
        "worker_now": datetime.now(UTC),
    }
    query = _MUTANT_QUERIES["client_clock_lease.claim"].text
    return self._claimed(conn.execute(query, params))


def _complete_then_start(self: Worker, process: JobProcess, job: Job) -> None:
    """Mark a claimed job done first, then hand it to its job process."""
    with self._statement() as conn:
        self.jobs.complete(conn, job)
    Worker.start_job(self, process, job)


def _enqueue_and_commit(
    self: Jobs,
    conn: psycopg.Connection[Any],
    args: dict[str, Any],
    *,
    queue: str,
    max_attempts: int,
    key: str | None,
) -> int:
    """Insert the job, then commit the caller's transaction from inside enqueue."""
    job_id = Jobs.enqueue(
        self, conn, args, queue=queue, max_attempts=max_attempts, key=key
    )
    conn.commit()
    return job_id


def _never_kill_overdue_jobs(self: Worker) -> None:
    """Let every job run as long as it likes."""


def _never_poll(self: Worker) -> bool:
    """Claim only when notified (or right after a full batch)."""
    return False


def _never_reconnect(self: Worker) -> None:
    """Stay alive but disconnected for good after the first connection loss."""
    self.reconnect_at_s = math.inf


MUTANTS: dict[str, Mutant] = {
    "delete_on_claim": Mutant(
        "claim deletes the job instead of leasing it; a worker that dies loses it",
        "F3",
        queries=("claim",),
    ),
    "ack_before_work": Mutant(
        "the worker completes a job before running it; a kill mid-job loses it",
        "F3",
        worker_methods={"start_job": _complete_then_start},
    ),
    "no_lease_expiry": Mutant(
        "claim never takes back a running job whose lease expired; it stays stuck",
        "F3",
        queries=("claim",),
    ),
    "no_heartbeat": Mutant(
        "the heartbeat extends no lease; a job outliving its lease runs twice at once",
        "F5",
        jobs_methods={"heartbeat": _heartbeat_without_write},
    ),
    "claim_without_lock": Mutant(
        "claim reads due jobs without FOR UPDATE SKIP LOCKED; two workers claim one",
        "F1",
        queries=("claim",),
    ),
    "unfenced_completion": Mutant(
        "complete checks no lease; a worker paused past its lease completes the job",
        "F5",
        queries=("complete",),
    ),
    "attempts_on_exception_only": Mutant(
        "attempts are counted when a failure is recorded, not at claim; "
        "an execution lost with its worker uses none",
        "F3",
        queries=("claim", "fail"),
    ),
    "no_retry_limit": Mutant(
        "fail always retries; a job that fails every time never ends dead",
        "F2",
        queries=("fail",),
    ),
    "dead_letter_deletes": Mutant(
        "fail deletes a job out of attempts instead of keeping it dead",
        "F2",
        queries=("fail",),
    ),
    "no_job_timeout": Mutant(
        "the worker never kills a job at its timeout; a hanging job holds its lease",
        "F5",
        worker_methods={"kill_overdue_jobs": _never_kill_overdue_jobs},
    ),
    "listen_without_poll": Mutant(
        "the worker claims only when notified; a retry whose backoff ends, or a job "
        "whose notification was lost, waits for good",
        "F1",
        worker_methods={"poll_due": _never_poll},
    ),
    "no_reconnect": Mutant(
        "after losing its connection the worker stays alive but never reconnects",
        "F6",
        worker_methods={"schedule_reconnect": _never_reconnect},
    ),
    "async_commit_enqueue": Mutant(
        "enqueue sets synchronous_commit off; a server crash loses acknowledged jobs",
        "F6",
        queries=("enqueue",),
    ),
    "retry_limit_off_by_one": Mutant(
        "fail retries a job on its final attempt too; a job that fails every "
        "time runs once more than max attempts",
        "F2",
        queries=("fail",),
    ),
    "gives_up_one_early": Mutant(
        "fail ends a job dead one attempt before max attempts; a job that "
        "needs its last attempt never gets it",
        "F1",
        queries=("fail",),
    ),
    "enqueue_commits": Mutant(
        "enqueue commits the caller's transaction itself; a connection lost in "
        "that commit leaves a job its caller was told failed",
        "F6",
        jobs_methods={"enqueue": _enqueue_and_commit},
    ),
    "client_clock_lease": Mutant(
        "claim sets the lease expiry from the worker's clock; a skewed clock "
        "hands out leases already expired (skew it with libfaketime)",
        "F6",
        jobs_methods={"claim": _claim_on_worker_clock},
    ),
}


def selected(mutant: str | None) -> str | None:
    """The mutant in force: ``mutant`` if given, else ``$REFQUEUE_MUTANT``, else none.

    Raises ``ConfigError`` for a name not in ``MUTANTS``.
    """
    name = mutant if mutant is not None else os.environ.get(ENV_VAR) or None
    if name is not None and name not in MUTANTS:
        raise ConfigError(
            f"unknown mutant {name!r}: choose one of {', '.join(sorted(MUTANTS))} "
            f"(or none, for the correct queue)"
        )
    return name


@cache
def jobs_for(mutant: str | None) -> Jobs:
    """The job operations with ``mutant``'s queries and methods, or the correct ones."""
    if mutant is None:
        return Jobs()
    spec = MUTANTS[mutant]
    queries = QUERIES.replaced(
        {name: _MUTANT_QUERIES[f"{mutant}.{name}"] for name in spec.queries}
    )
    cls = type(f"Jobs[{mutant}]", (Jobs,), dict(spec.jobs_methods))
    return cls(queries)


@cache
def worker_class_for(mutant: str | None) -> type[Worker]:
    """The worker class with ``mutant``'s methods, or the correct one."""
    if mutant is None:
        return Worker
    return type(f"Worker[{mutant}]", (Worker,), dict(MUTANTS[mutant].worker_methods))
