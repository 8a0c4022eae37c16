"""pgqueuer as an adapter: `pgq run`, DatabaseRetryEntrypointExecutor, held failures."""

from __future__ import annotations

import json

import psycopg

from harness.adapters._venv import TASK, VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

_LIVE = {"queued": "pending", "picked": "running", "failed": "dead"}
_LOGGED = {"successful": "done", "exception": "dead", "canceled": "dead",
           "deleted": "dead", "failed": "dead"}


class PgQueuerAdapter(VenvAdapter):
    """pgqueuer, configured as its documentation describes for production."""

    name = "pgqueuer"
    library = "pgqueuer"
    default_version = "1.6.0"
    requirements = ("psycopg[binary]",)
    imports = ("pgqueuer",)
    # DatabaseRetryEntrypointExecutor(max_attempts=2) re-queues a failed job
    # until job.attempts reaches 2: three executions. A picked job whose
    # heartbeat is older than heartbeat_timeout is picked again; heartbeats
    # go out at half that. pgqueuer has no job timeout and no transactional
    # completion.
    semantics = Semantics(
        max_attempts=3,
        lease_s=2.0,
        heartbeat_s=1.0,
        job_timeout_s=None,
        dead_letters=True,
        transactional_completion=False,
        backoff_max_s=1.0,
    )
    configured = (
        "entrypoint executor DatabaseRetryEntrypointExecutor(max_attempts=2, "
        "initial_delay=0.2 s, max_delay=1 s): 3 executions",
        "entrypoint on_failure='hold': a job out of attempts is kept as failed",
        "worker: pgq run's supervisor with heartbeat_timeout=2 s (stale picked "
        "jobs re-picked), restart_on_failure, restart_delay=1 s",
        "worker batch_size=1, max_concurrent_tasks=2, dequeue_timeout=1 s",
        "blocking job body in asyncio.to_thread, as the documentation asks",
        "the key-to-job-id record is a table of the harness's own, written in "
        "the enqueue's transaction",
    )

    def install(self, dsn: str) -> None:
        super().install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(self.sql["keys_table"])

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        conn.execute(
            self.sql["enqueue"],
            {"task": TASK, "payload": json.dumps(args), "key": key},
        )

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        found = {}
        for key, live, attempts, logged, queued in conn.execute(
            self.sql["snapshot"], {"keys": keys}
        ):
            if live is not None:
                # attempts counts retries; the current or last execution is one more
                running = 1 if live in ("picked", "failed") else 0
                found[key] = JobState(_LIVE[live], attempts + running)
            elif logged is not None:
                # the row is gone; each 'queued' log entry but the first is a retry
                found[key] = JobState(_LOGGED.get(logged, "dead"), queued)
        return found
