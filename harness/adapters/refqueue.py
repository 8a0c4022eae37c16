"""The reference queue as an adapter, with its deliberately broken variants."""

from __future__ import annotations

import sys

import psycopg

from harness.adapters.base import Adapter, Semantics
from harness.checker import JobState
from harness.errors import UsageError

HANDLER = "harness.jobs:execute"

# Short leases and timeouts keep a scenario to seconds; the worker gets the
# same values on its command line, so the semantics are what it does.
SEMANTICS = Semantics(
    max_attempts=3,
    lease_s=2.0,
    heartbeat_s=0.5,
    job_timeout_s=3.0,
    dead_letters=True,
    transactional_completion=False,
    backoff_max_s=1.0,
)
BACKOFF_BASE_S = 0.1
POLL_S = 0.5
CONCURRENCY = 2

_STATES = {"ready": "pending", "running": "running", "done": "done", "dead": "dead"}


class RefQueueAdapter(Adapter):
    """refqueue, optionally one of its mutants (`refqueue:NAME`)."""

    library = "queue-chaos"

    def __init__(self, mutant: str | None = None, *, transactional: bool = False):
        if mutant is not None:
            from refqueue.mutants import MUTANTS

            if mutant not in MUTANTS:
                raise UsageError(
                    f"unknown refqueue mutant {mutant!r}; choose one of "
                    + ", ".join(sorted(MUTANTS))
                )
        self.mutant = mutant
        self.transactional = transactional
        self.name = "refqueue" + (f":{mutant}" if mutant else "")
        if transactional:
            self.name += "+tx"
        self.semantics = Semantics(
            **{**SEMANTICS.__dict__, "transactional_completion": transactional}
        )

    def with_transactional_completion(self) -> RefQueueAdapter:
        return RefQueueAdapter(self.mutant, transactional=True)

    def install(self, dsn: str) -> None:
        import refqueue

        with psycopg.connect(dsn, autocommit=True) as conn:
            refqueue.install(conn)
            if self.transactional:
                from harness.jobs import EFFECTS_DDL

                conn.execute(EFFECTS_DDL)

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        import refqueue

        refqueue.enqueue(
            conn,
            args,
            key=key,
            max_attempts=self.semantics.max_attempts,
            mutant=self.mutant,
        )

    def worker_command(self, dsn: str, worker: str) -> list[str]:
        s = self.semantics
        command = [
            sys.executable, "-m", "refqueue", "worker",
            "--dsn", dsn,
            "--handler", HANDLER,
            "--name", worker,
            "--concurrency", str(CONCURRENCY),
            "--lease-s", str(s.lease_s),
            "--heartbeat-s", str(s.heartbeat_s),
            "--job-timeout-s", str(s.job_timeout_s),
            "--backoff-base-s", str(BACKOFF_BASE_S),
            "--backoff-max-s", str(s.backoff_max_s),
            "--poll-s", str(POLL_S),
        ]
        if self.transactional:
            command.append("--transactional")
        if self.mutant:
            command += ["--mutant", self.mutant]
        return command

    def snapshot(self, dsn: str, keys: list[str]) -> dict[str, JobState]:
        import refqueue

        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = {row["key"]: row for row in refqueue.snapshot(conn)}
            effects: dict[str, int] = {}
            if self.transactional:
                effects = dict(conn.execute(
                    "SELECT key, count(*) FROM queue_chaos_effects GROUP BY key"
                ).fetchall())
        final = {}
        for key in keys:
            row = rows.get(key)
            if row is None:
                final[key] = JobState("missing", 0)
                continue
            final[key] = JobState(
                _STATES.get(row["state"], row["state"]),
                row["attempts"],
                row.get("last_error"),
                effects.get(key, 0) if self.transactional else None,
            )
        return final
