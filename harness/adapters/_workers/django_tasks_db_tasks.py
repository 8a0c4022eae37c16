"""The harness task of django-tasks-db, imported once Django is configured."""

from __future__ import annotations

from django.tasks import task

from harness.adapters._workers.common import execute


@task
def run_job(key: str, behaviour: str) -> None:
    execute({"key": key, "behaviour": behaviour})
