"""Exponential backoff with jitter, for job retries and for reconnecting."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Past this many doublings every delay is at the ceiling anyway.
_MAX_DOUBLINGS = 60


@dataclass(frozen=True)
class Backoff:
    """How long to wait before trying again after consecutive failures.

    The delay doubles from ``base_s`` with every failure up to ``max_s``; the
    wait is drawn from the upper half of that delay so that workers that
    failed together do not all come back at the same instant.
    """

    base_s: float
    max_s: float

    def delay_after_failures_s(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 = first)."""
        doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
        ceiling_s = min(self.max_s, self.base_s * 2**doublings)
        return random.uniform(ceiling_s / 2, ceiling_s)


@dataclass
class Retries:
    """A run of consecutive failures of one kind of try, such as connecting."""

    backoff: Backoff
    failures: int = field(default=0)

    def failed(self) -> float:
        """Count one more failure; return the seconds to wait before trying again."""
        self.failures += 1
        return self.backoff.delay_after_failures_s(self.failures)

    def succeeded(self) -> None:
        """End the run of failures: the next failure waits the shortest delay."""
        self.failures = 0
