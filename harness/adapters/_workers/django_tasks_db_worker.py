"""django-tasks-db worker for the harness: Django's tasks with the database backend."""

from __future__ import annotations

import django
from django.conf import settings
from django.core.management import call_command

from harness.adapters._workers.common import main

POLL_S = "0.5"


def configure(dsn: str) -> None:
    """Settings of a minimal Django project whose task backend is the database."""
    settings.configure(
        INSTALLED_APPS=["django_tasks_db"],
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql",
                               **_database(dsn)}},
        TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}},
        USE_TZ=True,
    )
    django.setup()


def _database(dsn: str) -> dict:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    return {"NAME": parts.get("dbname", ""), "USER": parts.get("user", ""),
            "PASSWORD": parts.get("password", ""), "HOST": parts.get("host", ""),
            "PORT": parts.get("port", "")}


def install(dsn: str) -> None:
    configure(dsn)
    call_command("migrate", verbosity=0)


def worker(dsn: str, name: str) -> None:
    configure(dsn)
    call_command("db_worker", "--interval", POLL_S, "--no-startup-delay",
                 "--worker-id", name)


if __name__ == "__main__":
    main(install, worker)
