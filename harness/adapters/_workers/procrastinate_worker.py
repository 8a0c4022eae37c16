"""procrastinate worker for the harness: its worker, retries, stalled-job recovery."""

from __future__ import annotations

import procrastinate

from harness.adapters._workers.common import execute, main

QUEUE = "queue_chaos"
TASK = "queue_chaos_job"
# Kept in step with harness/adapters/procrastinate.py.
RETRIES = 2
RETRY_WAIT_S = 1
HEARTBEAT_S = 0.5
STALLED_AFTER_S = 2.0
CONCURRENCY = 2


def build_app(dsn: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(
        name=TASK, queue=QUEUE,
        retry=procrastinate.RetryStrategy(max_attempts=RETRIES, wait=RETRY_WAIT_S),
    )
    def run_job(key: str, behaviour: str) -> None:
        execute({"key": key, "behaviour": behaviour})

    # The documented recipe for jobs whose worker died: a periodic task that
    # hands the jobs of workers without a recent heartbeat back to the queue.
    @app.periodic(cron="* * * * * *")
    @app.task(name="queue_chaos_retry_stalled", queueing_lock="retry_stalled")
    async def retry_stalled(timestamp: int) -> None:
        stalled = await app.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=STALLED_AFTER_S
        )
        for job in stalled:
            await app.job_manager.retry_job(job)

    return app


def install(dsn: str) -> None:
    app = build_app(dsn)
    with app.open():
        app.schema_manager.apply_schema()


def worker(dsn: str, name: str) -> None:
    app = build_app(dsn)
    with app.open():
        app.run_worker(
            name=name,
            concurrency=CONCURRENCY,
            update_heartbeat_interval=HEARTBEAT_S,
            stalled_worker_timeout=STALLED_AFTER_S,
            fetch_job_polling_interval=0.5,
        )


if __name__ == "__main__":
    main(install, worker)
