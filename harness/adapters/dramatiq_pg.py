"""dramatiq with dramatiq-pg as an adapter: the `dramatiq` worker and its middleware."""

from __future__ import annotations

import time
import uuid

import psycopg
from psycopg.types.json import Jsonb

from harness.adapters._venv import VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

QUEUE = "queue_chaos"
ACTOR = "queue_chaos_job"

_STATES = {"queued": "pending", "consumed": "running", "done": "done",
           "rejected": "dead"}


class DramatiqPgAdapter(VenvAdapter):
    """dramatiq-pg, configured as its documentation describes for production."""

    name = "dramatiq-pg"
    library = "dramatiq-pg"
    default_version = "0.12.0"
    requirements = ("dramatiq<2", "psycopg2-binary", "setuptools<81")
    imports = ("dramatiq", "dramatiq_pg", "psycopg2")
    # max_retries=2: three executions. A consumed message is held by a
    # session advisory lock of its consumer's connection; when that
    # connection ends, another consumer takes the message again. There is
    # no heartbeat and no timeout on that lease: it lasts as long as the
    # connection. The TimeLimit middleware raises in the job's thread.
    semantics = Semantics(
        max_attempts=3,
        lease_s=1.0,
        heartbeat_s=None,
        job_timeout_s=3.0,
        dead_letters=True,
        transactional_completion=False,
        backoff_max_s=1.0,
    )
    configured = (
        "actor max_retries=2 (3 executions), min_backoff=200 ms, "
        "max_backoff=1000 ms, time_limit=3000 ms",
        "dramatiq --processes 1 --threads 2 --worker-shutdown-timeout 5000",
        "PostgresBroker(url=..., results=False); schema by `dramatiq-pg init`",
        "recovery of a dead consumer's messages: dramatiq-pg's advisory locks "
        "(automatic); the manual `dramatiq-pg recover` is not scheduled",
    )

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        message_id = str(uuid.uuid4())
        message = {
            "queue_name": QUEUE, "actor_name": ACTOR, "args": [], "kwargs": args,
            "options": {}, "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
        conn.execute(self.sql["enqueue"], {
            "queue": QUEUE, "message_id": message_id, "message": Jsonb(message),
        })

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        found = {}
        for key, state, retries in conn.execute(
            self.sql["snapshot"], {"actor": ACTOR, "keys": keys}
        ):
            # the Retries middleware counts each failed execution in retries;
            # a consumed or done message has had one more execution
            ran = 1 if state in ("consumed", "done") else 0
            found[key] = JobState(_STATES.get(state, "pending"), retries + ran)
        return found
