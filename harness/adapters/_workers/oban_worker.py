"""oban worker for the harness: `oban start` with a worker class that retries."""

from __future__ import annotations

import asyncio
from pathlib import Path

from oban import worker
from oban.cli import main as oban_main

from harness.adapters._workers.common import execute, main

CONFIG = Path(__file__).with_name("oban.toml")
# Kept in step with harness/adapters/oban.py.
MAX_ATTEMPTS = 3
BACKOFF_S = 1
TIMEOUT_S = 3.0


@worker(queue="queue_chaos", max_attempts=MAX_ATTEMPTS)
class HarnessWorker:
    """Runs one harness job; blocking work goes to a thread."""

    async def process(self, job) -> None:
        await asyncio.to_thread(execute, dict(job.args))

    def backoff(self, job) -> int:
        return BACKOFF_S

    def timeout(self, job) -> float:
        return TIMEOUT_S


def install(dsn: str) -> None:
    oban_main(["install", "--dsn", dsn], prog_name="oban")


def worker_main(dsn: str, name: str) -> None:
    oban_main(
        ["start", "--config", str(CONFIG), "--dsn", dsn, "--node", name],
        prog_name="oban",
    )


if __name__ == "__main__":
    main(install, worker_main)
