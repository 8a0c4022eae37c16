"""Job processes: children that run one job at a time, so a worker can kill one."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import psycopg

from .connection import connect
from .errors import LeaseLost, UnknownHandler
from .jobs import Job, Jobs

#: What became of one execution: ``ok`` ran (the worker completes it), ``done``
#: ran and completed in its own transaction, ``error`` raised, ``lease_lost``
#: ran but could not complete, ``crashed`` took its process down, ``timed_out``
#: was killed at the job timeout, ``stopped`` was killed because its worker
#: stopped.
OutcomeKind = Literal[
    "ok", "done", "error", "lease_lost", "crashed", "timed_out", "stopped"
]

_ERROR_LIMIT_CHARS = 2000
_PR_SET_PDEATHSIG = 1


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
    child dies with its worker (Linux parent-death signal) and ignores SIGTERM:
    its worker decides when a job stops.
    """

    def __init__(self, command: list[str]) -> None:
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None
        self._received = b""
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

    def fileno(self) -> int:
        """The descriptor to wait on for an outcome (or the child's death)."""
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.fileno()

    def start(self, job: Job, timeout_s: float) -> None:
        """Hand ``job`` to the child, starting a child first if there is none."""
        if self._process is None:
            self._spawn()
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
        if b"\n" not in self._received:
            return None
        line, _, self._received = self._received.partition(b"\n")
        reply = json.loads(line)
        return Outcome(self._take_job(), reply["kind"], reply.get("error"))

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
    command = [sys.executable, "-m", "refqueue.jobprocess", "--handler", handler]
    command += ["--parent-pid", str(os.getpid())]
    if transactional:
        command += ["--transactional", "--dsn", dsn]
    if mutant:
        command += ["--mutant", mutant]
    return command


# The child's side ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run jobs read from stdin until stdin ends, one outcome line per job."""
    parser = argparse.ArgumentParser(prog="python -m refqueue.jobprocess")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--transactional", action="store_true")
    parser.add_argument("--dsn")
    parser.add_argument("--mutant")
    options = parser.parse_args(argv)

    requests, replies = _take_protocol_pipes()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(options.parent_pid)

    handler = load_handler(options.handler)
    if options.transactional:
        from .mutants import jobs_for  # the mutant's queries, if any

        run: Callable[[Job], dict[str, Any]] = _TransactionalRunner(
            handler, options.dsn, jobs_for(options.mutant)
        )
    else:
        run = _PlainRunner(handler)

    for line in _lines(requests):
        reply = run(Job.from_json(json.loads(line)))
        replies.write(json.dumps(reply).encode() + b"\n")
    return 0


def _take_protocol_pipes() -> tuple[BinaryIO, BinaryIO]:
    # Keep stdin and stdout for the protocol; whatever the handler prints goes
    # to stderr, where it cannot be taken for an outcome.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return requests, replies


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    buffer = b""
    while chunk := stream.read(65536):
        buffer += chunk
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            yield line


def _die_with_parent(parent_pid: int) -> None:
    # A worker killed with SIGKILL takes its running jobs with it, as a worker
    # that runs jobs in its own process would.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: an idle child still ends when its stdin closes
    if os.getppid() != parent_pid:
        os._exit(0)


class _PlainRunner:
    """Calls ``handler(args)``; the worker completes the job afterwards."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self._handler = handler

    def __call__(self, job: Job) -> dict[str, Any]:
        try:
            self._handler(job.args)
        except Exception as exc:
            return {"kind": "error", "error": describe_error(exc)}
        return {"kind": "ok"}


class _TransactionalRunner:
    """Calls ``handler(args, conn)`` and completes the job in that transaction.

    The job's own writes commit if and only if its fenced completion does.
    """

    def __init__(self, handler: Callable[..., Any], dsn: str, jobs: Jobs) -> None:
        self._handler = handler
        self._dsn = dsn
        self._jobs = jobs
        self._conn: psycopg.Connection[Any] | None = None

    def __call__(self, job: Job) -> dict[str, Any]:
        try:
            conn = self._connection()
            with conn.transaction():
                self._handler(job.args, conn)
                self._jobs.complete(conn, job)
        except LeaseLost as exc:
            return {"kind": "lease_lost", "error": str(exc)}
        except Exception as exc:
            self._drop_broken_connection()
            return {"kind": "error", "error": describe_error(exc)}
        return {"kind": "done"}

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            self._conn = connect(self._dsn)
        return self._conn

    def _drop_broken_connection(self) -> None:
        if self._conn is not None and self._conn.closed:
            self._conn = None


if __name__ == "__main__":
    sys.exit(main())
