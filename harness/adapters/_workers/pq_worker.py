"""pq worker for the harness: pq.tasks' perform, each job inside a queue transaction."""

from __future__ import annotations

import psycopg2
from pq.tasks import PQ

from harness.adapters._workers.common import execute, main, on_sigterm

QUEUE = "queue_chaos"
POLL_S = 1.0


def run_job(job_id: int, key: str, behaviour: str) -> None:
    """The task pq.tasks locates by its dotted path; pq passes the job id first."""
    execute({"key": key, "behaviour": behaviour})


def install(dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        PQ(conn=conn).create()
    finally:
        conn.close()


def worker(dsn: str, name: str) -> None:
    stopping = []
    on_sigterm(lambda: stopping.append(True))
    queue = PQ(conn=psycopg2.connect(dsn))[QUEUE]
    # `with queue:` makes get and perform one transaction, as pq's
    # documentation advises: a worker that dies rolls its job back.
    while not stopping:
        with queue:
            job = queue.get(timeout=POLL_S)
            if job is not None:
                queue.perform(job)


if __name__ == "__main__":
    main(install, worker)
