"""The job table's operations, each one named query (the rules: docs/leases.md)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .errors import ConfigError, LeaseLost
from .queries import QUERIES, Queries

#: The channel that enqueue notifies (sql/queue.sql); the payload is the queue.
CHANNEL = "refqueue"


@dataclass(frozen=True)
class Job:
    """A claimed job and the lease under which its worker may complete or fail it."""

    id: int
    key: str | None
    queue: str
    args: dict[str, Any]
    #: which attempt this claim started: 1 for the first
    attempt: int
    max_attempts: int
    lease_token: UUID

    def to_json(self) -> dict[str, Any]:
        # Field by field: asdict() would deep-copy args, for nothing.
        return {
            **{name: getattr(self, name) for name in _JOB_FIELDS},
            "lease_token": str(self.lease_token),
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Job:
        return cls(**{**record, "lease_token": UUID(record["lease_token"])})


_JOB_FIELDS = tuple(f.name for f in fields(Job))


class DeadJob(NamedTuple):
    """A job that a claim found on an expired final attempt and ended dead."""

    id: int
    key: str | None
    attempts: int


class Claimed(NamedTuple):
    """What one claim did: the jobs it leased and the jobs it ended dead."""

    jobs: list[Job]
    dead: list[DeadJob]


def install(conn: psycopg.Connection[Any]) -> None:
    """Create the schema if absent, in a transaction block of its own.

    Inside a transaction the caller opened, that block is a savepoint and the
    caller commits; otherwise it commits by itself. Safe to run concurrently.
    """
    with conn.transaction():
        conn.execute(QUERIES["install"].text)


class Jobs:
    """The operations on the job table, each one named query on the caller's conn.

    Nothing here commits or opens a transaction: every operation runs in the
    connection's current transaction, or as its own in autocommit mode.
    ``refqueue.mutants`` builds variants of this class with one query or one
    method replaced.
    """

    def __init__(self, queries: Queries = QUERIES) -> None:
        self.queries = queries

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def enqueue(
        self,
        conn: psycopg.Connection[Any],
        args: dict[str, Any],
        *,
        queue: str,
        max_attempts: int,
        key: str | None,
    ) -> int:
        """Insert a ready job in the current transaction; return its id."""
        _check_enqueue(args, queue, max_attempts)
        params = {
            "queue": queue,
            "key": key,
            "args": Jsonb(args),
            "max_attempts": max_attempts,
        }
        row = self._run(conn, "enqueue", params).fetchone()
        assert row is not None
        return int(row[0])

    def claim(
        self,
        conn: psycopg.Connection[Any],
        *,
        queue: str,
        worker: str,
        limit: int,
        lease_s: float,
    ) -> Claimed:
        """Lease up to ``limit`` due jobs of ``queue`` to ``worker``, in one statement.

        Due jobs are ready ones whose time has come and running ones whose
        lease expired. Each claim uses one attempt; a job found on an expired
        final attempt ends dead instead.
        """
        params = {"queue": queue, "worker": worker, "limit": limit, "lease_s": lease_s}
        return self._claimed(self._run(conn, "claim", params))

    def heartbeat(
        self, conn: psycopg.Connection[Any], jobs: Collection[Job], lease_s: float
    ) -> set[int]:
        """Extend the valid leases among ``jobs`` in one statement; return their ids.

        A job missing from the result is no longer this worker's: its lease
        expired or another worker claimed it.
        """
        if not jobs:
            return set()
        params = {
            "ids": [job.id for job in jobs],
            "lease_tokens": [job.lease_token for job in jobs],
            "lease_s": lease_s,
        }
        return {row[0] for row in self._run(conn, "heartbeat", params)}

    def complete(self, conn: psycopg.Connection[Any], job: Job) -> None:
        """Mark ``job`` done; raise ``LeaseLost`` (changing nothing) if not held."""
        params = {"id": job.id, "lease_token": job.lease_token}
        if self._run(conn, "complete", params).fetchone() is None:
            raise LeaseLost(_lease_lost_message(job, "complete"))

    def fail(
        self,
        conn: psycopg.Connection[Any],
        job: Job,
        *,
        error: str,
        retry_in_s: float,
    ) -> str:
        """Record a failed attempt of ``job``; return its new state, ready or dead.

        The job is ready again after ``retry_in_s`` while it has attempts
        left, else dead, keeping ``error`` as its last error. Raises
        ``LeaseLost`` (changing nothing) if the caller no longer holds it.
        """
        params = {
            "id": job.id,
            "lease_token": job.lease_token,
            "error": error,
            "retry_in_s": retry_in_s,
        }
        row = self._run(conn, "fail", params).fetchone()
        if row is None:
            raise LeaseLost(_lease_lost_message(job, "fail"))
        return str(row[0])

    def snapshot(
        self, conn: psycopg.Connection[Any], queue: str
    ) -> list[dict[str, Any]]:
        """Every job of ``queue`` in enqueue order: key, state, attempts, ..."""
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(self.queries["snapshot"].text, {"queue": queue})
            return cursor.fetchall()

    def _run(
        self, conn: psycopg.Connection[Any], name: str, params: dict[str, Any]
    ) -> psycopg.Cursor[Any]:
        return conn.execute(self.queries[name].text, params)

    @staticmethod
    def _claimed(cursor: psycopg.Cursor[Any]) -> Claimed:
        claimed = Claimed([], [])
        for id_, key, queue, args, state, attempts, max_attempts, token in cursor:
            if state == "running":
                job = Job(id_, key, queue, args, attempts, max_attempts, token)
                claimed.jobs.append(job)
            else:
                claimed.dead.append(DeadJob(id_, key, attempts))
        return claimed


def _check_enqueue(args: object, queue: object, max_attempts: object) -> None:
    if not isinstance(args, dict):
        raise ConfigError(f"args must be a dict, not {type(args).__name__}")
    if not isinstance(queue, str) or not queue:
        raise ConfigError(f"queue must be a non-empty string, not {queue!r}")
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(
            f"max_attempts must be an int of at least 1: {max_attempts!r}"
        )


def _lease_lost_message(job: Job, action: str) -> str:
    return (
        f"cannot {action} job {job.id} (key {job.key!r}, attempt {job.attempt}): "
        "this lease on it expired, another worker claimed it, or the job already "
        "ended; nothing was changed"
    )
