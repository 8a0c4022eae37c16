"""The worker: claims jobs, runs them in job processes, keeps and ends their leases."""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg

from .backoff import Backoff, Retries
from .connection import Watchdog, connect
from .errors import ConfigError, LeaseLost
from .jobprocess import JobProcess, Outcome, child_command, describe_error
from .jobs import CHANNEL, Claimed, Job, Jobs

log = logging.getLogger("refqueue.worker")

#: How soon a worker tries again after losing its connection, and how late.
RECONNECT_BACKOFF = Backoff(base_s=0.05, max_s=2.0)

# The longest the loop sleeps without a reason to wake up, so that nothing it
# forgot to wait for can stall it for long.
_MAX_SLEEP_S = 1.0

_STOPPED_ERROR = "worker stopped before the job finished"


def _default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker is told at its start; ``check`` says what is wrong."""

    dsn: str
    handler: str
    queue: str = "default"
    concurrency: int = 1
    lease_s: float = 5.0
    heartbeat_s: float = 1.0
    job_timeout_s: float = 30.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    poll_s: float = 0.5
    grace_s: float = 5.0
    transactional: bool = False
    name: str = field(default_factory=_default_name)
    mutant: str | None = None

    def check(self) -> None:
        """Raise ``ConfigError`` naming the first unacceptable setting and its fix."""
        for option in ("lease_s", "heartbeat_s", "job_timeout_s", "poll_s"):
            _check_positive(option, getattr(self, option))
        _check_positive("backoff_base_s", self.backoff_base_s)
        if self.concurrency < 1:
            raise ConfigError(
                f"--concurrency {self.concurrency} must be at least 1: "
                "give the number of jobs to run at once"
            )
        if self.heartbeat_s >= self.lease_s:
            raise ConfigError(
                f"--heartbeat-s {self.heartbeat_s} must be shorter than --lease-s "
                f"{self.lease_s}, or leases expire between heartbeats: "
                "use a third of the lease or less"
            )
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError(
                f"--backoff-max-s {self.backoff_max_s} must not be shorter than "
                f"--backoff-base-s {self.backoff_base_s}: raise it"
            )
        if self.grace_s < 0:
            raise ConfigError(f"--grace-s {self.grace_s} must not be negative: use 0")
        if not self.queue:
            raise ConfigError("--queue must not be empty: name the queue to work on")


def _check_positive(option: str, value: float) -> None:
    if not value > 0:
        flag = "--" + option.replace("_", "-")
        raise ConfigError(f"{flag} {value} must be a positive number of seconds")


class Worker:
    """One worker process: claim, run, heartbeat, complete or fail, reconnect.

    The loop is single-threaded. Jobs run in job processes, each of which the
    worker kills at the job timeout. Leases, fencing and the life cycle of a
    job are in docs/leases.md. The methods marked *seam* each make one
    behaviour decision; ``refqueue.mutants`` replaces them one at a time.
    """

    def __init__(
        self, config: WorkerConfig, jobs: Jobs, conn: psycopg.Connection[Any]
    ) -> None:
        self.config = config
        self.jobs = jobs
        self.conn: psycopg.Connection[Any] | None = conn
        self.retry_backoff = Backoff(config.backoff_base_s, config.backoff_max_s)
        self.reconnects = Retries(RECONNECT_BACKOFF)
        self.reconnect_at_s = math.inf
        self.watchdog = Watchdog(limit_s=config.lease_s)
        command = child_command(
            handler=config.handler,
            transactional=config.transactional,
            dsn=config.dsn,
            mutant=config.mutant,
        )
        self.processes = [JobProcess(command) for _ in range(config.concurrency)]
        # Outcomes the database has not been told yet; their leases are kept.
        self.unrecorded: list[Outcome] = []
        self.more_may_be_due = True
        self.last_claim_s = -math.inf
        self.last_heartbeat_s = time.monotonic()
        self.stop_signal: int | None = None
        self.stopping_since_s: float | None = None
        self.gave_up_holding = False
        self._wakeup_r, self._wakeup_w = os.pipe()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.config.name!r} queue={self.config.queue!r}>"
        )

    # The loop --------------------------------------------------------------------

    def run(self) -> None:
        """Work until stopped by SIGTERM or SIGINT and every held job is settled."""
        self._handle_stop_signals()
        assert self.conn is not None
        self._listen(self.conn)
        log.info(
            "worker started",
            extra={
                "queue": self.config.queue,
                "concurrency": self.config.concurrency,
                "mutant": self.config.mutant,
            },
        )
        try:
            while True:
                self.step()
                if self._finished():
                    break
                self._wait(self._next_wakeup_s() - time.monotonic())
        finally:
            for process in self.processes:
                process.kill()
            self._close_connection()
        log.info("worker stopped")

    def step(self) -> None:
        """Do what is due now: timeouts, stop, reconnect, record, heartbeat, claim."""
        self.kill_overdue_jobs()
        self._notice_stop_signal()
        if self._grace_over():
            self._release_held_jobs()
            return
        if self.stopping_since_s is None:
            # A job's timeout runs from its hand-off: keep a child started, and
            # claim only for children that said they are (JobProcess.available).
            for process in self.processes:
                process.ensure_started()
        if self.conn is None and time.monotonic() >= self.reconnect_at_s:
            self._reconnect()
        if self.conn is None:
            return

        try:
            self._heartbeat_if_due()
            self._record_and_claim()
        except psycopg.OperationalError as exc:
            self._connection_lost(exc)
            return
        # Notifications that came in during those statements wait in the
        # connection, which the loop's select cannot see.
        self._receive_notifications()

    # Seams: one behaviour decision each ---------------------------------------------

    def start_job(self, process: JobProcess, job: Job) -> None:
        """Seam: hand a claimed job to an idle job process; complete it after it ran."""
        log.debug("job claimed", extra={"key": job.key, "attempt": job.attempt})
        process.start(job, self.config.job_timeout_s)

    def kill_overdue_jobs(self) -> None:
        """Seam: kill each job process past its job's timeout; the attempt failed."""
        now_s = time.monotonic()
        for process in self.processes:
            if process.busy and now_s >= process.deadline_s:
                outcome = process.kill_for_timeout(self.config.job_timeout_s)
                log.warning(
                    "job timed out",
                    extra={"key": outcome.job.key, "attempt": outcome.job.attempt},
                )
                self.unrecorded.append(outcome)

    def poll_due(self) -> bool:
        """Seam: claim without a notification once the poll interval has passed.

        Notifications are lost while a worker is disconnected and are never
        sent when a retry's backoff ends; polling finds those jobs.
        """
        return time.monotonic() >= self.last_claim_s + self.config.poll_s

    def schedule_reconnect(self) -> None:
        """Seam: connect again after the reconnect backoff."""
        self.reconnect_at_s = time.monotonic() + self.reconnects.failed()

    # Claiming and recording -------------------------------------------------------

    def _should_claim(self) -> bool:
        if self.stopping_since_s is not None:
            return False
        if not any(process.available for process in self.processes):
            return False
        return self.more_may_be_due or self.poll_due()

    def _record_and_claim(self) -> None:
        """Record the outcomes not yet recorded and claim for idle job processes.

        Each is one statement in a transaction of its own: on this design's
        reference machine two autocommit statements cost less than one
        transaction of two statements, whose BEGIN and COMMIT are round trips
        of their own (benchmarks/cpu_per_job.py). A job starts once its claim
        committed; an outcome leaves ``unrecorded`` once its record committed,
        and until then its lease is kept, so a lost connection leaves it to
        the next heartbeat.
        """
        claim = self._should_claim()
        self._record_outcomes()
        if claim:
            with self._statement() as conn:
                claimed = self._claim(conn)
            self._start_claimed(*claimed)

    def _claim(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[list[JobProcess], Claimed]:
        idle = [process for process in self.processes if process.available]
        claimed = self.jobs.claim(
            conn,
            queue=self.config.queue,
            worker=self.config.name,
            limit=len(idle),
            lease_s=self.config.lease_s,
        )
        return idle, claimed

    def _start_claimed(self, idle: list[JobProcess], claimed: Claimed) -> None:
        self.last_claim_s = time.monotonic()
        for dead in claimed.dead:
            log.warning(
                "job dead",
                extra={
                    "key": dead.key,
                    "attempt": dead.attempts,
                    "error": "lease expired during the final attempt",
                },
            )
        for process, job in zip(idle, claimed.jobs, strict=False):
            self.start_job(process, job)

        # A full batch, or one that ended jobs dead, may have left due jobs behind.
        self.more_may_be_due = len(claimed.jobs) == len(idle) or bool(claimed.dead)

    def _on_outcome(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.kind == "done":
            log.debug("job done", extra={"key": job.key, "attempt": job.attempt})
        elif outcome.kind == "lease_lost":
            self._log_lease_lost(job, "complete")
        else:
            if outcome.kind == "crashed":
                log.warning(
                    "job process died",
                    extra={
                        "key": job.key,
                        "attempt": job.attempt,
                        "error": outcome.error,
                    },
                )
            self.unrecorded.append(outcome)

    def _record_outcomes(self) -> None:
        """Record each outcome not yet recorded, each in its own transaction."""
        while self.unrecorded:
            with self._statement() as conn:
                report = self._record(conn, self.unrecorded[0])
            self.unrecorded.pop(0)
            report()

    def _record(
        self, conn: psycopg.Connection[Any], outcome: Outcome
    ) -> Callable[[], None]:
        """Complete or fail the job of ``outcome``; return what logs the result.

        The log waits for the caller's commit, which alone makes the result true.
        """
        job = outcome.job
        if outcome.kind == "ok":
            try:
                self.jobs.complete(conn, job)
            except LeaseLost:
                return partial(self._log_lease_lost, job, "complete")
            return partial(
                log.debug, "job done", extra={"key": job.key, "attempt": job.attempt}
            )

        error = outcome.error or outcome.kind
        retry_in_s = (
            0.0
            if outcome.kind == "stopped"
            else self.retry_backoff.delay_after_failures_s(job.attempt)
        )
        try:
            state = self.jobs.fail(conn, job, error=error, retry_in_s=retry_in_s)
        except LeaseLost:
            return partial(self._log_lease_lost, job, "fail")
        fields = {"key": job.key, "attempt": job.attempt, "error": error}
        if state == "dead":
            return partial(log.warning, "job dead", extra=fields)
        return partial(
            log.info,
            "job failed",
            extra={**fields, "retry_in_s": round(retry_in_s, 3)},
        )

    # Leases ---------------------------------------------------------------------

    def _held_jobs(self) -> list[Job]:
        running = [process.job for process in self.processes if process.job]
        return running + [outcome.job for outcome in self.unrecorded]

    def _heartbeat_if_due(self) -> None:
        now_s = time.monotonic()
        if now_s < self.last_heartbeat_s + self.config.heartbeat_s:
            return
        self.last_heartbeat_s = now_s
        held = self._held_jobs()
        if not held:
            return

        with self._statement() as conn:
            still_held = self.jobs.heartbeat(conn, held, self.config.lease_s)

        # A job no longer held runs (or will run) elsewhere: stop this execution.
        for process in self.processes:
            if process.job and process.job.id not in still_held:
                self._log_lease_lost(process.job, "heartbeat")
                process.kill()
        for outcome in self.unrecorded:
            if outcome.job.id not in still_held:
                self._log_lease_lost(outcome.job, "heartbeat")
        self.unrecorded = [o for o in self.unrecorded if o.job.id in still_held]

    def _log_lease_lost(self, job: Job, action: str) -> None:
        log.warning(
            "lease lost",
            extra={"key": job.key, "attempt": job.attempt, "action": action},
        )

    # Connection -------------------------------------------------------------------

    @contextmanager
    def _statement(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, broken by the watchdog if a statement hangs."""
        if self.conn is None:
            raise psycopg.OperationalError("the worker is not connected")
        with self.watchdog.guard(self.conn):
            yield self.conn

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        with self.watchdog.guard(conn):
            conn.execute(self.jobs.queries["listen"].text)

    def _connection_lost(self, exc: Exception) -> None:
        log.warning("connection lost", extra={"error": describe_error(exc)})
        self._close_connection()
        self.schedule_reconnect()

    def _reconnect(self) -> None:
        try:
            conn = connect(self.config.dsn)
        except psycopg.OperationalError as exc:
            log.debug("connect failed", extra={"error": describe_error(exc)})
            self.schedule_reconnect()
            return
        try:
            self._listen(conn)
        except psycopg.OperationalError as exc:
            log.debug("connect failed", extra={"error": describe_error(exc)})
            conn.close()
            self.schedule_reconnect()
            return
        log.info("reconnected", extra={"failures": self.reconnects.failures})
        self.conn = conn
        self.reconnects.succeeded()

    def _close_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _receive_notifications(self) -> None:
        assert self.conn is not None
        try:
            for notify in self.conn.notifies(timeout=0):
                if notify.channel == CHANNEL and notify.payload == self.config.queue:
                    self.more_may_be_due = True
        except psycopg.OperationalError as exc:
            self._connection_lost(exc)

    # Waiting and stopping -----------------------------------------------------------

    def _next_wakeup_s(self) -> float:
        now_s = time.monotonic()
        wakeups = [now_s + _MAX_SLEEP_S]
        busy = [process for process in self.processes if process.busy]
        wakeups += [process.deadline_s for process in busy]
        if busy or self.unrecorded:
            wakeups.append(self.last_heartbeat_s + self.config.heartbeat_s)
        if self.stopping_since_s is not None:
            wakeups.append(self.stopping_since_s + self.config.grace_s)
        if self.conn is None:
            wakeups.append(self.reconnect_at_s)
        elif self.unrecorded:
            wakeups.append(now_s)
        elif self.stopping_since_s is None and any(
            process.available for process in self.processes
        ):
            if self.more_may_be_due:
                wakeups.append(now_s)
            else:
                wakeups.append(self.last_claim_s + self.config.poll_s)
        return min(wakeups)

    def _wait(self, timeout_s: float) -> None:
        """Sleep until a job process answers, a notification or signal comes, or
        ``timeout_s`` passes."""
        watched: list[Any] = [self._wakeup_r]
        watched += [process for process in self.processes if process.alive]
        if self.conn is not None:
            watched.append(self.conn)
        readable, _, _ = select.select(watched, [], [], max(timeout_s, 0.0))
        for source in readable:
            if source is self._wakeup_r:
                os.read(self._wakeup_r, 4096)
            elif source is self.conn:
                self._receive_notifications()
            else:
                outcome = source.read_outcome()
                if outcome is not None:
                    self._on_outcome(outcome)

    def _handle_stop_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        # Only note it: the loop logs and acts, outside the signal handler.
        self.stop_signal = signum

    def _notice_stop_signal(self) -> None:
        if self.stop_signal is None or self.stopping_since_s is not None:
            return
        self.stopping_since_s = time.monotonic()
        log.info(
            "worker stopping",
            extra={
                "signal": signal.Signals(self.stop_signal).name,
                "held": len(self._held_jobs()),
                "grace_s": self.config.grace_s,
            },
        )

    def _grace_over(self) -> bool:
        return (
            self.stopping_since_s is not None
            and not self.gave_up_holding
            and time.monotonic() >= self.stopping_since_s + self.config.grace_s
        )

    def _finished(self) -> bool:
        if self.stopping_since_s is None:
            return False
        return self.gave_up_holding or not self._held_jobs()

    def _release_held_jobs(self) -> None:
        """Past the grace period: stop running jobs and release every held lease.

        A released job is ready at once for another worker; the attempt it
        started counts like any other (docs/leases.md).
        """
        for process in self.processes:
            if process.job is not None:
                job = process.job
                process.kill()
                self.unrecorded.append(Outcome(job, "stopped", _STOPPED_ERROR))
        released = len(self.unrecorded)
        try:
            self._record_outcomes()
        except psycopg.OperationalError as exc:
            log.warning(
                "leases left to expire",
                extra={"jobs": len(self.unrecorded), "error": describe_error(exc)},
            )
        else:
            if released:
                log.info("jobs released", extra={"jobs": released})
        self.unrecorded.clear()
        self.gave_up_holding = True
