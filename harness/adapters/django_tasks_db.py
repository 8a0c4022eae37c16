"""django-tasks-db as an adapter: Django's task framework with its database worker."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from harness.adapters._venv import VenvAdapter
from harness.adapters.base import Semantics
from harness.checker import JobState

TASK = "harness.adapters._workers.django_tasks_db_tasks.run_job"

_STATES = {"READY": "pending", "RUNNING": "running", "SUCCESSFUL": "done",
           "FAILED": "dead"}


class DjangoTasksDbAdapter(VenvAdapter):
    """django-tasks-db, configured as its documentation describes for production."""

    name = "django-tasks-db"
    library = "django-tasks-db"
    default_version = "0.13.0"
    requirements = ("psycopg[binary]",)
    imports = ("django", "django_tasks_db")
    # Django >= 6 brings the task framework this backend plugs into, and
    # Django 6 needs Python >= 3.12.
    python_min = (3, 12)
    # The database backend runs each task once: no retries, no recovery of
    # a task whose worker died (it stays RUNNING), no job timeout.
    semantics = Semantics(
        max_attempts=1,
        lease_s=1.0,
        heartbeat_s=None,
        job_timeout_s=None,
        dead_letters=True,
        transactional_completion=False,
        backoff_max_s=0.0,
    )
    configured = (
        "TASKS backend django_tasks_db.DatabaseBackend on PostgreSQL, schema by "
        "`migrate`",
        "worker: `manage.py db_worker --interval 0.5 --no-startup-delay "
        "--worker-id NAME`",
        "no retry, recovery or timeout exists to switch on",
    )

    def enqueue(self, conn: psycopg.Connection, key: str, args: dict) -> None:
        conn.execute(self.sql["enqueue"], {
            "args_kwargs": Jsonb({"args": [], "kwargs": args}), "task": TASK,
        })

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        rows = conn.execute(self.sql["snapshot"], {"task": TASK, "keys": keys})
        return {key: JobState(_STATES.get(status, "pending"), runs)
                for key, status, runs in rows}
