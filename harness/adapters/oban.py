"""oban (the Python port) as an adapter: `oban start`, its lifeline and retries."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from harness.adapters._venv import VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

QUEUE = "queue_chaos"
WORKER = "harness.adapters._workers.oban_worker.HarnessWorker"
MAX_ATTEMPTS = 3

_STATES = {"available": "pending", "scheduled": "pending", "retryable": "pending",
           "executing": "running", "completed": "done", "discarded": "dead",
           "cancelled": "dead", "suspended": "pending"}


class ObanAdapter(VenvAdapter):
    """oban, configured as its documentation describes for production."""

    name = "oban"
    library = "oban"
    default_version = "0.7.0"
    requirements = ("psycopg[binary]",)
    imports = ("oban",)
    python_min = (3, 12)
    # attempt is counted at fetch, so crashes use attempts up. There is no
    # heartbeat: the lifeline rescues a job whose attempt started more than
    # rescue_after ago, so that is the lease. The worker's timeout cancels
    # the job's await (cooperative, per oban's documentation). oban has no
    # transactional completion.
    semantics = Semantics(
        max_attempts=MAX_ATTEMPTS,
        lease_s=6.0,
        heartbeat_s=None,
        job_timeout_s=3.0,
        dead_letters=True,
        transactional_completion=False,
        backoff_max_s=1.0,
    )
    configured = (
        f"worker max_attempts={MAX_ATTEMPTS}, backoff() = 1 s, timeout() = 3 s",
        "lifeline interval=1 s, rescue_after=6 s (longer than any attempt); "
        "stager interval=0.5 s",
        "oban start --config oban.toml: queue concurrency 2, "
        "shutdown_grace_period=5 s",
        "blocking job body in asyncio.to_thread inside the async process()",
    )

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        conn.execute(self.sql["enqueue"], {
            "args": Jsonb(args), "max_attempts": MAX_ATTEMPTS, "queue": QUEUE,
            "worker": WORKER,
        })

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        rows = conn.execute(self.sql["snapshot"], {"worker": WORKER, "keys": keys})
        return {key: JobState(_STATES.get(state, "pending"), attempt)
                for key, state, attempt in rows}
