"""pgqueuer worker for the harness: `pgq run` with a retrying, holding entrypoint."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
from pgqueuer import PgQueuer
from pgqueuer.adapters.cli import cli, supervisor
from pgqueuer.core.executors import DatabaseRetryEntrypointExecutor
from pgqueuer.db import PsycopgDriver

from harness.adapters._workers.common import execute, main

TASK = "queue_chaos_job"
# Kept in step with harness/adapters/pgqueuer.py.
RETRIES = 2
RETRY_DELAY_S = 0.2
RETRY_DELAY_MAX_S = 1.0
HEARTBEAT_TIMEOUT_S = 2.0
CONCURRENCY = 2


@contextlib.asynccontextmanager
async def create(args: list[str]) -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` calls, once per (re)start; args is [dsn]."""
    async with await psycopg.AsyncConnection.connect(args[0], autocommit=True) as conn:
        yield _build(PgQueuer(PsycopgDriver(conn)))


def _build(pgq: PgQueuer) -> PgQueuer:
    retrying = functools.partial(
        DatabaseRetryEntrypointExecutor,
        max_attempts=RETRIES,
        initial_delay=timedelta(seconds=RETRY_DELAY_S),
        max_delay=timedelta(seconds=RETRY_DELAY_MAX_S),
    )

    @pgq.entrypoint(TASK, on_failure="hold", executor_factory=retrying)
    async def run_job(job) -> None:
        # blocking work goes to a thread, as pgqueuer's documentation asks
        await asyncio.to_thread(execute, json.loads(job.payload))

    return pgq


def install(dsn: str) -> None:
    cli.app(args=["--pg-dsn", dsn, "install"], prog_name="pgq")


def worker(dsn: str, name: str) -> None:
    # What `pgq run` does, called directly: its command line hands the log
    # level to a logger setup that this typer release passes as a string.
    asyncio.run(
        supervisor.run(
            functools.partial(create, [dsn]),
            heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT_S),
            dequeue_timeout=timedelta(seconds=1),
            batch_size=1,
            max_concurrent_tasks=CONCURRENCY,
            restart_on_failure=True,
            restart_delay=timedelta(seconds=1),
        )
    )

if __name__ == "__main__":
    main(install, worker)
