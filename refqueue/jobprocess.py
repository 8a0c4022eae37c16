"""Job processes, the worker's side: children that run one job at a time."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import UnknownHandler
from .jobs import Job

#: What became of one execution: ``ok`` ran (the worker completes it), ``done``
#: ran and completed in its own transaction, ``error`` raised, ``lease_lost``
#: ran but could not complete, ``crashed`` took its process down, ``timed_out``
#: was killed at the job timeout, ``stopped`` was killed because its worker
#: stopped.
OutcomeKind = Literal[
    "ok", "done", "error", "lease_lost", "crashed", "timed_out", "stopped"
]

#: The kind of the line a child writes once it is ready for its first job.
STARTED = "started"

_ERROR_LIMIT_CHARS = 2000


@dataclass(frozen=True)
class Outcome:
    """How one execution of a job ended, as the worker learnt it."""

    job: Job
    kind: OutcomeKind
    error: str | None = None


def load_handler(spec: str) -> Callable[..., Any]:
    """Import the handler named ``module:function``; ``UnknownHandler`` if absent."""
    module_name, colon, function_name = spec.partition(":")
    if not colon or not module_name or not function_name:
        raise UnknownHandler(
            f"handler {spec!r} is not of the form module:function; "
            "give one such as mypackage.tasks:run"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UnknownHandler(
            f"handler {spec!r}: cannot import module {module_name!r} "
            f"({describe_error(exc)}); check its name and that it is on PYTHONPATH"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UnknownHandler(
            f"handler {spec!r}: module {module_name!r} has no function "
            f"{function_name!r}; name a callable defined in it"
        )
    return function


def describe_error(exc: BaseException) -> str:
    """One line naming an exception and its message, cut to a bounded length."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:_ERROR_LIMIT_CHARS]


class JobProcess:
    """One child process that runs jobs handed to it, and the job it runs now.

    Jobs go to the child as JSON lines on its stdin, outcomes come back on its
    stdout; the handler's own output to stdout goes to stderr instead. The
    child's first line says it has started (imported and loaded its handler),
    so that no job's timeout runs while a child is still starting. The child
    dies with its worker (Linux parent-death signal) and ignores SIGTERM: its
    worker decides when a job stops.
    """

    def __init__(self, command: list[str]) -> None:
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None
        self._received = b""
        self._started = False
        self.job: Job | None = None
        self.deadline_s = 0.0

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        key = self.job.key if self.job else None
        return f"<JobProcess pid={pid} job={key!r}>"

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def alive(self) -> bool:
        return self._process is not None

    @property
    def available(self) -> bool:
        """Whether a job handed over now would start at once: started and idle."""
        return self._started and self.job is None

    def fileno(self) -> int:
        """The descriptor to wait on for an outcome (or the child's death)."""
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.fileno()

    def ensure_started(self) -> None:
        """Start a child if there is none, so the next job finds it ready."""
        if self._process is None:
            self._spawn()

    def start(self, job: Job, timeout_s: float) -> None:
        """Hand ``job`` to the child, starting a child first if there is none."""
        self.ensure_started()
        assert self._process is not None and self._process.stdin is not None
        self.job = job
        self.deadline_s = time.monotonic() + timeout_s
        # If the child is gone, reading its output will say how it ended.
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.write(json.dumps(job.to_json()).encode() + b"\n")

    def read_outcome(self) -> Outcome | None:
        """Read what the child wrote; the outcome of its job once complete.

        Call when ``fileno()`` is readable. The end of the child's output means
        it died: its job, if any, crashed.
        """
        assert self._process is not None and self._process.stdout is not None
        try:
            data = os.read(self._process.stdout.fileno(), 65536)
        except BlockingIOError:
            return None
        if not data:
            returncode = self._close()
            if self.job is None:
                return None
            error = f"job process died: {_describe_returncode(returncode)}"
            return Outcome(self._take_job(), "crashed", error)
        self._received += data
        outcome = None
        while b"\n" in self._received:
            line, _, self._received = self._received.partition(b"\n")
            reply = json.loads(line)
            if reply["kind"] == STARTED:
                self._started = True
            else:
                outcome = Outcome(self._take_job(), reply["kind"], reply.get("error"))
        return outcome

    def kill_for_timeout(self, timeout_s: float) -> Outcome:
        """Kill the child at its job's timeout; the job's outcome is ``timed_out``."""
        job = self._take_job()
        self.kill()
        return Outcome(job, "timed_out", f"job timed out after {timeout_s} s")

    def kill(self) -> None:
        """Kill the child at once and forget its job; the next job starts a new one."""
        if self._process is not None:
            self._process.kill()
            self._close()
        self.job = None

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        assert self._process.stdout is not None
        os.set_blocking(self._process.stdout.fileno(), False)
        self._received = b""

    def _close(self) -> int:
        assert self._process is not None
        returncode = self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        self._process = None
        self._started = False
        return returncode

    def _take_job(self) -> Job:
        assert self.job is not None, "the child answered without a job"
        job, self.job = self.job, None
        return job


def _describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def child_command(
    *,
    handler: str,
    transactional: bool,
    dsn: str,
    mutant: str | None,
) -> list[str]:
    """The command line that starts one job process for the calling worker."""
    command = [sys.executable, "-m", "refqueue.child", "--handler", handler]
    command += ["--parent-pid", str(os.getpid())]
    if transactional:
        command += ["--transactional", "--dsn", dsn]
    if mutant:
        command += ["--mutant", mutant]
    return command
