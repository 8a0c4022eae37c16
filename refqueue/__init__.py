"""refqueue: a reference PostgreSQL job queue that survives every failure case.

Leases, fencing and the life cycle of a job: docs/leases.md. The worker is
``python -m refqueue worker`` (refqueue.cli); deliberately broken variants
for the harness are in refqueue.mutants.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .errors import ConfigError, LeaseLost, RefQueueError, UnknownHandler
from .jobs import Claimed, DeadJob, Job, Jobs, install
from .mutants import MUTANTS, jobs_for, selected

__all__ = [
    "MUTANTS",
    "Claimed",
    "ConfigError",
    "DeadJob",
    "Job",
    "Jobs",
    "LeaseLost",
    "RefQueueError",
    "UnknownHandler",
    "enqueue",
    "install",
    "snapshot",
]


def enqueue(
    conn: psycopg.Connection[Any],
    args: dict[str, Any],
    *,
    queue: str = "default",
    max_attempts: int = 3,
    key: str | None = None,
    mutant: str | None = None,
) -> int:
    """Add a job to ``queue`` in the caller's current transaction; return its id.

    Nothing is committed here: the job exists, and workers are notified, only
    when the caller commits (on an autocommit connection, at once). ``key`` is
    stored with the job for ``snapshot``. ``mutant`` (or ``$REFQUEUE_MUTANT``)
    selects a broken variant of the enqueue query (refqueue.mutants).
    """
    return jobs_for(selected(mutant)).enqueue(
        conn, args, queue=queue, max_attempts=max_attempts, key=key
    )


def snapshot(
    conn: psycopg.Connection[Any], queue: str = "default"
) -> list[dict[str, Any]]:
    """Every job of ``queue`` in enqueue order.

    Each is a dict of ``key``, ``state`` (ready, running, done or dead),
    ``attempts`` (started so far), ``max_attempts`` and ``last_error``.
    """
    return Jobs().snapshot(conn, queue)
