"""Queue adapters: the facade through which the harness drives any queue."""

from __future__ import annotations

from harness.adapters.base import Adapter, Semantics
from harness.errors import UsageError

__all__ = ["Adapter", "Semantics", "get_adapter", "names"]

DEFAULT = "refqueue"


def names() -> list[str]:
    """Every adapter name this installation knows."""
    from refqueue.mutants import MUTANTS

    return ["refqueue", "refqueue+tx"] + [f"refqueue:{m}" for m in sorted(MUTANTS)]


def get_adapter(spec: str) -> Adapter:
    """The adapter named by spec: `refqueue`, `refqueue+tx`, `refqueue:MUTANT`."""
    from harness.adapters.refqueue import RefQueueAdapter

    base, plus, option = spec.partition("+")
    if plus and option != "tx":
        raise UsageError(f"unknown adapter option {option!r} in {spec!r}; only +tx")
    name, _, mutant = base.partition(":")
    if name == "refqueue":
        return RefQueueAdapter(mutant or None, transactional=bool(plus))
    raise UsageError(
        f"unknown adapter {spec!r}; `queue-chaos adapters` lists the known ones"
    )
