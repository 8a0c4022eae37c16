"""chancy as an adapter: its Worker, process executor, RetryPlugin and Recovery."""

from __future__ import annotations

import json
import secrets
import time
import uuid

import psycopg
from psycopg.types.json import Jsonb

from harness.adapters._venv import VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

QUEUE = "queue_chaos"
FUNC = "harness.adapters._workers.chancy_worker.run_job"
MAX_ATTEMPTS = 3
TIME_LIMIT_S = 3
RETRY_SETTINGS = {"backoff": 1, "backoff_factor": 1, "backoff_limit": 1,
                  "backoff_jitter": [0, 0]}

_STATES = {"pending": "pending", "retrying": "pending", "running": "running",
           "succeeded": "done", "failed": "dead"}


def _job_id() -> uuid.UUID:
    """A time-ordered job id of the form chancy gives its jobs (UUID version 7)."""
    stamp = (time.time_ns() // 100) & 0xFFFFFFFFFFFFFF
    return uuid.UUID(int=(stamp << 68) | (7 << 64) | (2 << 62) | secrets.randbits(62))


class ChancyAdapter(VenvAdapter):
    """chancy, configured as its documentation describes for production."""

    name = "chancy"
    library = "chancy"
    default_version = "0.26.0"
    requirements = ("psycopg[binary]",)
    imports = ("chancy",)
    # max_attempts counts executions. A job runs in the process executor's
    # child process with a time limit. A running job whose worker has not
    # been seen for heartbeat_timeout is recovered by the leader's Recovery
    # plugin. chancy has no transactional completion.
    semantics = Semantics(
        max_attempts=MAX_ATTEMPTS,
        lease_s=3.0,
        heartbeat_s=1.0,
        job_timeout_s=float(TIME_LIMIT_S),
        dead_letters=True,
        transactional_completion=False,
        backoff_max_s=1.0,
    )
    configured = (
        f"job max_attempts={MAX_ATTEMPTS}, Limit(TIME, {TIME_LIMIT_S} s)",
        "RetryPlugin with retry_settings backoff=1 s, factor 1, limit 1 s, "
        "no jitter",
        "Leadership(poll_interval=1, timeout=6) and Recovery(poll_interval=1)",
        "Worker heartbeat_poll_interval=1 s, heartbeat_timeout=3 s, "
        "shutdown_timeout=5 s",
        "queue concurrency=2, ProcessExecutor, polling_interval=1 s",
    )

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        conn.execute(self.sql["enqueue"], {
            "id": _job_id(), "queue": QUEUE, "func": FUNC, "kwargs": Jsonb(args),
            "limits": Jsonb([{"t": "time", "v": TIME_LIMIT_S}]),
            "meta": Jsonb({"retry_settings": RETRY_SETTINGS}),
            "max_attempts": MAX_ATTEMPTS,
        })
        conn.execute(self.sql["notify"], {
            "payload": json.dumps({"t": "queue.pushed", "q": QUEUE})
        })

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        found = {}
        for key, state, attempts, _max in conn.execute(
            self.sql["snapshot"], {"func": FUNC, "keys": keys}
        ):
            running = 1 if state == "running" else 0
            found[key] = JobState(_STATES.get(state, "pending"), attempts + running)
        return found
