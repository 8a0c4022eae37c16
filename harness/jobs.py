"""Job behaviours and the job body that worker processes run for the harness."""

from __future__ import annotations

import ctypes
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import UsageError
from harness.ledger import Ledger

if TYPE_CHECKING:
    from harness.adapters.base import Semantics

__all__ = [
    "CRASH_EXIT_STATUS",
    "EFFECTS_COUNT_SQL",
    "EFFECTS_DDL",
    "EFFECT_INSERT_SQL",
    "ENV_WORKER",
    "Behaviour",
    "JobFailed",
    "execute",
    "expected_outcome",
]

ENV_WORKER = "QUEUE_CHAOS_WORKER"

# Exit status of a job that crashes its process without a signal.
CRASH_EXIT_STATUS = 70

EFFECTS_DDL = """\
CREATE TABLE IF NOT EXISTS queue_chaos_effects (
    key text NOT NULL,
    n integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, n)
)"""

# The job's effect in transactional-completion mode, written on the
# connection whose transaction also completes the job.
EFFECT_INSERT_SQL = "INSERT INTO queue_chaos_effects (key, n) VALUES (%s, %s)"

# Committed effects per key, for an adapter's snapshot; parameter: list of keys.
EFFECTS_COUNT_SQL = (
    "SELECT key, count(*) FROM queue_chaos_effects "
    "WHERE key = ANY(%s) GROUP BY key"
)

_KINDS = ("ok", "slow", "fail", "crash", "hang")
_FORMS = (
    "ok, slow:S, fail_first:K, fail_always, crash_first:K[:segv], "
    "crash_always[:segv], hang_first:K, hang_always "
    "(S a number of seconds >= 0, K an integer >= 0)"
)


class JobFailed(Exception):
    """The job failed on purpose, as its behaviour asked."""


@dataclass(frozen=True)
class Behaviour:
    """What a job does on each execution, written as a string such as ``fail_first:2``.

    ``kind`` is ok, slow, fail, crash or hang.  For fail, crash and hang,
    ``first`` is K of ``*_first:K`` (the first K executions misbehave, later
    ones succeed) or None for ``*_always``.  ``seconds`` is S of ``slow:S``.
    ``segv`` makes a crash a real segmentation fault instead of ``os._exit``.
    """

    kind: str
    first: int | None = None
    seconds: float = 0.0
    segv: bool = False

    def __post_init__(self) -> None:
        first, seconds = self.first, self.seconds
        first_ok = first is None or (
            self.kind in ("fail", "crash", "hang")
            and isinstance(first, int)
            and not isinstance(first, bool)
            and first >= 0
        )
        seconds_ok = (
            isinstance(seconds, (int, float))
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
            and seconds >= 0
            and (self.kind == "slow" or seconds == 0)
        )
        segv_ok = self.segv is False or (self.segv is True and self.kind == "crash")
        bad = self.kind not in _KINDS or not (first_ok and seconds_ok and segv_ok)
        if bad:
            raise UsageError(
                f"{self!r} is not a job behaviour; accepted forms: {_FORMS}"
            )

    @classmethod
    def parse(cls, text: str | Behaviour) -> Behaviour:
        """The behaviour written as ``text``; a Behaviour is returned as it is."""
        if isinstance(text, Behaviour):
            return text
        behaviour = _parse(text) if isinstance(text, str) else None
        if behaviour is None:
            raise UsageError(
                f"job behaviour {text!r} is not understood; accepted forms: {_FORMS}"
            )
        return behaviour

    def __str__(self) -> str:
        if self.kind == "ok":
            return "ok"
        if self.kind == "slow":
            short = f"{self.seconds:g}"
            exact = short if float(short) == self.seconds else repr(self.seconds)
            return f"slow:{exact}"
        if self.first is None:
            text = f"{self.kind}_always"
        else:
            text = f"{self.kind}_first:{self.first}"
        return f"{text}:segv" if self.segv else text

    def misbehaves_on(self, n: int) -> bool:
        """Whether execution ``n`` (1-based ordinal) fails, crashes or hangs."""
        if self.kind in ("ok", "slow"):
            return False
        return self.first is None or n <= self.first


_FAULTY = re.compile(
    r"(?P<kind>fail|crash|hang)_(?:first:(?P<first>[0-9]+)|always)(?P<segv>:segv)?",
    re.ASCII,
)


def _parse(text: str) -> Behaviour | None:
    text = text.strip()
    if text == "ok":
        return Behaviour("ok")
    if text.startswith("slow:"):
        try:
            seconds = float(text.removeprefix("slow:"))
        except ValueError:
            return None
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return Behaviour("slow", seconds=seconds)
    match = _FAULTY.fullmatch(text)
    if match is None or (match["segv"] and match["kind"] != "crash"):
        return None
    first = None if match["first"] is None else int(match["first"])
    return Behaviour(match["kind"], first=first, segv=bool(match["segv"]))


def expected_outcome(
    behaviour: str | Behaviour, semantics: Semantics
) -> Literal["done", "dead"] | None:
    """The final state a correct queue gives a job of this behaviour, fault-free.

    A hanging execution counts as a failed attempt only where the queue has a
    job timeout; without one the first hang never ends, and the answer is None:
    the job has no final state to expect.  A slow job whose S reaches the job
    timeout times out on every attempt.
    """
    behaviour = Behaviour.parse(behaviour)
    if behaviour.kind == "hang" and semantics.job_timeout_s is None:
        return None if behaviour.first != 0 else "done"
    if behaviour.kind == "slow":
        timeout_s = semantics.job_timeout_s
        if timeout_s is not None and behaviour.seconds >= timeout_s:
            return "dead"
        return "done"
    if behaviour.kind == "ok":
        return "done"
    if behaviour.first is None or behaviour.first >= semantics.max_attempts:
        return "dead"
    return "done"


def execute(args: dict[str, Any], conn: Any = None) -> None:
    """Run one execution of a harness job, recording it in the ledger.

    ``args`` is ``{"key": ..., "behaviour": ...}``.  The ordinal and start are
    written first, the outcome (ok / fail) before returning or raising, so a
    crash, a kill or a hang leaves a start without an end.  With ``conn`` (a
    psycopg 3 connection inside the transaction that will also complete the
    job), the job's effect is one row in ``queue_chaos_effects``.
    """
    key, behaviour = _job_args(args)
    worker = os.environ.get(ENV_WORKER)
    if not worker:
        raise UsageError(
            f"{ENV_WORKER} is not set; a job body must run in a worker started "
            "by the harness, or with that variable naming the worker"
        )
    ledger = Ledger.from_env()

    n = ledger.start(key, worker=worker)
    try:
        _act(behaviour, key, n)
        if conn is not None:
            conn.execute(EFFECT_INSERT_SQL, (key, n))
    except BaseException as exc:
        # Interruptions (a worker's shutdown, a timeout raised in the job's
        # thread) end this execution too; the ledger must say it did not succeed.
        ledger.finish(key, n, "fail", worker=worker, error=_describe(exc))
        raise
    ledger.finish(key, n, "ok", worker=worker)


def _job_args(args: dict[str, Any]) -> tuple[str, Behaviour]:
    if not isinstance(args, dict) or not {"key", "behaviour"} <= args.keys():
        raise UsageError(
            f"job arguments {args!r} lack 'key' or 'behaviour'; "
            "a harness job is enqueued with {'key': ..., 'behaviour': ...}"
        )
    return args["key"], Behaviour.parse(args["behaviour"])


def _act(behaviour: Behaviour, key: str, n: int) -> None:
    if behaviour.kind == "slow":
        time.sleep(behaviour.seconds)
    if not behaviour.misbehaves_on(n):
        return
    if behaviour.kind == "fail":
        raise JobFailed(f"{key} failed on execution {n} as {behaviour} asks")
    if behaviour.kind == "crash":
        if behaviour.segv:
            _segfault()
        os._exit(CRASH_EXIT_STATUS)
    if behaviour.kind == "hang":
        threading.Event().wait()


def _segfault() -> None:
    # Reading address 0 is a genuine invalid access, delivered by the kernel
    # the way a broken C extension's would be.
    ctypes.string_at(0)
    os.kill(os.getpid(), signal.SIGSEGV)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
