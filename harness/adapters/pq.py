"""pq as an adapter: pq.tasks with retries, each job run in a queue transaction."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Json

from harness.adapters._venv import VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

QUEUE = "queue_chaos"
FUNCTION = "harness.adapters._workers.pq_worker.run_job"
MAX_RETRIES = 2
RETRY_IN = "1s"


class PqAdapter(VenvAdapter):
    """pq, configured as its documentation describes for production."""

    name = "pq"
    library = "pq"
    default_version = "1.9.1"
    requirements = ("psycopg2-binary",)
    imports = ("pq", "pq.tasks", "psycopg2")
    # max_retries=2: three executions, a failed one put back as a new row
    # 1 s later. The job's row is locked by the worker's open transaction
    # while it runs; that lock is the lease and lasts as long as the
    # worker's connection. pq has no job timeout and keeps no failed state:
    # a job out of retries looks like any other dequeued row.
    semantics = Semantics(
        max_attempts=MAX_RETRIES + 1,
        lease_s=1.0,
        heartbeat_s=None,
        job_timeout_s=None,
        dead_letters=False,
        transactional_completion=False,
        backoff_max_s=1.0,
    )
    configured = (
        f"task max_retries={MAX_RETRIES} (3 executions), retry_in='{RETRY_IN}'",
        "worker loop: `with queue: job = queue.get(timeout=1); "
        "queue.perform(job)` (pq.tasks' perform inside the documented "
        "transactional use of the queue), one job at a time per process",
        "no reconnect in pq: a worker whose connection fails exits and is "
        "replaced",
        "schema: PQ(conn).create()",
    )

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        data = {"function": FUNCTION, "args": [], "kwargs": args, "retried": 0,
                "retry_in": RETRY_IN, "max_retries": MAX_RETRIES}
        conn.execute(self.sql["enqueue"], {"queue": QUEUE, "data": Json(data)})

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        found = {}
        for key, dequeued, _retried, ran in conn.execute(
            self.sql["snapshot"], {"queue": QUEUE, "keys": keys}
        ):
            # pq records no outcome: a newest row that was dequeued and put
            # back nothing after it is all a finished job leaves behind
            found[key] = JobState("done" if dequeued else "pending", ran)
        return found
