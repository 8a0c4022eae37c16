"""The dramatiq broker module of the harness: a PostgresBroker and the harness actor."""

from __future__ import annotations

import os

import dramatiq
from dramatiq_pg import PostgresBroker

from harness.adapters._workers.common import execute

ENV_DSN = "QUEUE_CHAOS_DRAMATIQ_DSN"
# Kept in step with harness/adapters/dramatiq_pg.py.
MAX_RETRIES = 2
MIN_BACKOFF_MS = 200
MAX_BACKOFF_MS = 1000
TIME_LIMIT_MS = 3000

broker = PostgresBroker(url=os.environ[ENV_DSN], results=False)
dramatiq.set_broker(broker)


@dramatiq.actor(
    actor_name="queue_chaos_job", queue_name="queue_chaos",
    max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS,
    time_limit=TIME_LIMIT_MS,
)
def run_job(key: str, behaviour: str) -> None:
    execute({"key": key, "behaviour": behaviour})
