"""Queue adapters: the facade through which the harness drives any queue."""

from __future__ import annotations

import importlib

from harness.adapters.base import Adapter, Semantics
from harness.errors import UsageError

__all__ = ["LIBRARIES", "Adapter", "Semantics", "get_adapter", "libraries", "names"]

DEFAULT = "refqueue"

# Adapters of queue libraries: name -> "module:class". Each runs its workers
# in an environment of its own (harness.envs); `NAME==VERSION` picks a release.
LIBRARIES = {
    "procrastinate": "harness.adapters.procrastinate:ProcrastinateAdapter",
    "pgqueuer": "harness.adapters.pgqueuer:PgQueuerAdapter",
    "chancy": "harness.adapters.chancy:ChancyAdapter",
    "pq": "harness.adapters.pq:PqAdapter",
    "dramatiq-pg": "harness.adapters.dramatiq_pg:DramatiqPgAdapter",
    "django-tasks-db": "harness.adapters.django_tasks_db:DjangoTasksDbAdapter",
    "oban": "harness.adapters.oban:ObanAdapter",
}


def libraries() -> list[str]:
    """The names of the queue-library adapters."""
    return list(LIBRARIES)


def names() -> list[str]:
    """Every adapter name this installation knows."""
    from refqueue.mutants import MUTANTS

    return (
        ["refqueue", "refqueue+tx"]
        + [f"refqueue:{m}" for m in sorted(MUTANTS)]
        + libraries()
    )


def get_adapter(spec: str) -> Adapter:
    """The adapter named by spec.

    `refqueue`, `refqueue+tx`, `refqueue:MUTANT`, a library (`pgqueuer`), or
    a library at a given release (`pgqueuer==0.23.0`).
    """
    from harness.adapters.refqueue import RefQueueAdapter

    library, pinned, version = spec.partition("==")
    if library in LIBRARIES:
        if pinned and not version:
            raise UsageError(f"adapter {spec!r} names no version after '=='")
        module, _, cls = LIBRARIES[library].partition(":")
        return getattr(importlib.import_module(module), cls)(version or None)
    base, plus, option = spec.partition("+")
    if plus and option != "tx":
        raise UsageError(f"unknown adapter option {option!r} in {spec!r}; only +tx")
    name, _, mutant = base.partition(":")
    if name == "refqueue" and not pinned:
        return RefQueueAdapter(mutant or None, transactional=bool(plus))
    raise UsageError(
        f"unknown adapter {spec!r}; `queue-chaos adapters` lists the known ones"
    )
