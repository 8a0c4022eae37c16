"""chancy worker for the harness: its Worker, process executor, retry and recovery."""

from __future__ import annotations

import asyncio

from chancy import Chancy, Queue, Worker
from chancy.plugins.leadership import Leadership
from chancy.plugins.recovery import Recovery
from chancy.plugins.retry import RetryPlugin

from harness.adapters._workers.common import execute, main

QUEUE = "queue_chaos"
# Kept in step with harness/adapters/chancy.py.
CONCURRENCY = 2
POLL_S = 1
HEARTBEAT_S = 1
HEARTBEAT_TIMEOUT_S = 3


def run_job(key: str, behaviour: str) -> None:
    """The job function chancy imports by name in its executor's processes."""
    execute({"key": key, "behaviour": behaviour})


def build(dsn: str) -> Chancy:
    return Chancy(
        dsn,
        plugins=[
            # recovery of jobs whose worker stopped heartbeating needs a
            # leader; both are on by default, here with short intervals
            Leadership(poll_interval=POLL_S, timeout=2 * HEARTBEAT_TIMEOUT_S),
            Recovery(poll_interval=POLL_S),
            RetryPlugin(),
        ],
    )


async def _install(dsn: str) -> None:
    async with build(dsn) as chancy:
        await chancy.migrate()
        await chancy.declare(
            Queue(
                QUEUE,
                concurrency=CONCURRENCY,
                executor="chancy.executors.process.ProcessExecutor",
                polling_interval=POLL_S,
            )
        )


async def _worker(dsn: str, name: str) -> None:
    async with build(dsn) as chancy:
        async with Worker(
            chancy,
            worker_id=name,
            heartbeat_poll_interval=HEARTBEAT_S,
            heartbeat_timeout=HEARTBEAT_TIMEOUT_S,
            queue_change_poll_interval=POLL_S,
            shutdown_timeout=5,
        ) as worker:
            await worker.wait_for_shutdown()


def install(dsn: str) -> None:
    asyncio.run(_install(dsn))


def worker(dsn: str, name: str) -> None:
    asyncio.run(_worker(dsn, name))


if __name__ == "__main__":
    main(install, worker)
