"""What an adapter tells the harness about its queue: its semantics."""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.errors import UsageError


def _check_seconds(
    name: str, value: object, *, optional: bool = False, zero_ok: bool = False
) -> None:
    if value is None and optional:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and (value > 0 or (zero_ok and value == 0)):
        return
    allowed = "a number of seconds " + (">= 0" if zero_ok else "> 0")
    if optional:
        allowed += " or None"
    raise UsageError(f"Semantics.{name} is {value!r}; it must be {allowed}")


@dataclass(frozen=True)
class Semantics:
    """The queue's promises, from which the checker derives every expectation.

    ``max_attempts`` counts every execution, crashes included.  ``lease_s`` is
    how long a claim stays valid without a heartbeat; ``heartbeat_s`` is the
    interval at which a live worker extends it (None: no heartbeat, the lease
    simply expires).  ``job_timeout_s`` is the hard limit on one execution
    (None: none, so a hanging job is never freed while its worker lives).
    ``dead_letters``: a job out of attempts is kept in a dead state.
    ``transactional_completion``: the job's own writes commit with its
    completion.  ``backoff_max_s`` is the longest wait between two attempts.
    """

    max_attempts: int
    lease_s: float
    heartbeat_s: float | None = None
    job_timeout_s: float | None = None
    dead_letters: bool = True
    transactional_completion: bool = False
    backoff_max_s: float = 0.0

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise UsageError(
                f"Semantics.max_attempts is {attempts!r}; it must be an integer >= 1"
            )
        _check_seconds("lease_s", self.lease_s)
        _check_seconds("heartbeat_s", self.heartbeat_s, optional=True)
        _check_seconds("job_timeout_s", self.job_timeout_s, optional=True)
        _check_seconds("backoff_max_s", self.backoff_max_s, zero_ok=True)
        for flag in ("dead_letters", "transactional_completion"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(
                    f"Semantics.{flag} is {getattr(self, flag)!r}; "
                    "it must be True or False"
                )


class Adapter:
    """How the harness drives one queue implementation: the facade of a queue.

    An adapter installs the queue's schema, enqueues a harness job inside the
    caller's transaction, gives the command that starts one worker process
    running the harness's job body, reads the final state of each job, and
    declares its `semantics`. Nothing in the harness special-cases a queue
    by name; everything it expects follows from these.
    """

    #: The name used on the command line (`--adapter NAME`).
    name: str = ""
    #: The distribution whose version goes into every report.
    library: str = ""
    semantics: Semantics

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def unavailable(self) -> str | None:
        """Why this adapter cannot run here, or None when it can."""
        return None

    def version(self) -> str:
        """The version of the queue library under test."""
        from importlib import metadata

        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError:
            return "unknown"

    def with_transactional_completion(self) -> Adapter | None:
        """This adapter with the job's writes committed with its completion.

        None when the queue cannot do that; a scenario that needs it then
        fails with that reason.
        """
        return None

    def install(self, dsn: str) -> None:
        """Create the queue's schema in an empty database."""
        raise NotImplementedError

    def enqueue(self, conn: object, key: str, args: dict) -> None:
        """Enqueue one job inside conn's current transaction; never commit."""
        raise NotImplementedError

    def worker_command(self, dsn: str, worker: str) -> list[str]:
        """The command that starts one worker process running `harness.jobs`."""
        raise NotImplementedError

    def snapshot(self, dsn: str, keys: list[str]) -> dict[str, object]:
        """The queue's final state of each key, as `harness.checker.JobState`.

        A key the queue has no row for is `missing`.
        """
        raise NotImplementedError
