"""procrastinate as an adapter: its worker, RetryStrategy and stalled-job recovery."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from harness.adapters._venv import QUEUE, TASK, VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

# procrastinate's job statuses, as harness states; an aborted or cancelled job
# is kept and will not run again, which the harness calls dead.
_STATES = {
    "todo": "pending", "doing": "running", "succeeded": "done",
    "failed": "dead", "aborted": "dead", "cancelled": "dead", "aborting": "running",
}


class ProcrastinateAdapter(VenvAdapter):
    """procrastinate, configured as its documentation describes for production."""

    name = "procrastinate"
    library = "procrastinate"
    default_version = "3.10.0"
    requirements = ("psycopg[binary]",)
    imports = ("procrastinate",)
    # RetryStrategy(max_attempts=2) retries twice: three executions. The
    # lease is the worker heartbeat: a job is stalled once its worker's
    # heartbeat is older than stalled_worker_timeout. procrastinate has no
    # job timeout and no transactional completion.
    semantics = Semantics(
        max_attempts=3,
        lease_s=2.0,
        heartbeat_s=0.5,
        job_timeout_s=None,
        dead_letters=True,
        transactional_completion=False,
        backoff_max_s=1.0,
    )
    configured = (
        "task retry=RetryStrategy(max_attempts=2, wait=1): 3 executions, 1 s apart",
        "worker update_heartbeat_interval=0.5 s, stalled_worker_timeout=2 s",
        "stalled-job recovery: the documented periodic task (every second) "
        "calling get_stalled_jobs(seconds_since_heartbeat=2) and retry_job",
        "worker concurrency=2, fetch_job_polling_interval=0.5 s, listen/notify on",
        "schema: App.schema_manager.apply_schema() (as `procrastinate schema "
        "--apply`)",
    )

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        conn.execute(
            self.sql["enqueue"], {"queue": QUEUE, "task": TASK, "args": Jsonb(args)}
        )

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        rows = conn.execute(self.sql["snapshot"], {"task": TASK, "keys": keys})
        found = {}
        for key, status, attempts in rows:
            # attempts counts finished executions; a doing job has one more
            executions = attempts + (1 if status == "doing" else 0)
            found[key] = JobState(_STATES[status], executions)
        return found
