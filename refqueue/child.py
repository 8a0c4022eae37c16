"""Job processes, the child's side: run the jobs a worker hands over, one at a time.

Started by ``refqueue.jobprocess.JobProcess``; not imported by the package, so
that ``python -m refqueue.child`` runs it as the main module only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import psycopg

from .connection import connect
from .errors import LeaseLost
from .jobprocess import STARTED, describe_error, load_handler
from .jobs import Job, Jobs

_PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    """Run jobs read from stdin until stdin ends, one outcome line per job."""
    parser = argparse.ArgumentParser(prog="python -m refqueue.child")
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

    replies.write(json.dumps({"kind": STARTED}).encode() + b"\n")
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
