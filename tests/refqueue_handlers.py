"""Job handlers for refqueue's tests, and the worker processes that run them.

Every execution appends ``start`` and then ``end`` records (JSON lines, one
``os.write`` each) to ``$REFQUEUE_TEST_RECORDS``. What a job does comes from
its args: ``sleep_s``, ``sleep_first_s`` (only on the first execution),
``fail`` (raise every time), ``fail_times`` (raise on the first N executions),
``crash`` (``os._exit``), ``hang`` (sleep for good).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

import refqueue

RECORDS_ENV = "REFQUEUE_TEST_RECORDS"
TESTS_DIR = Path(__file__).parent

#: Worker settings that keep a test to about a second per lease.
FAST = {
    "lease_s": 1.0,
    "heartbeat_s": 0.2,
    "poll_s": 0.2,
    "job_timeout_s": 5.0,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "grace_s": 2.0,
}

T = TypeVar("T")


def record(args: dict[str, Any]) -> None:
    """A plain handler: ``handler(args)``."""
    _run(args)


def record_in_transaction(args: dict[str, Any], conn: Any) -> None:
    """A transactional handler: writes its effect row on the job's connection."""
    conn.execute("INSERT INTO effects (key) VALUES (%s)", (args["key"],))
    _run(args)


def _run(args: dict[str, Any]) -> None:
    key = args["key"]
    executions = sum(
        1 for r in read_records() if r["key"] == key and r["event"] == "start"
    )
    _append({"key": key, "event": "start", "n": executions + 1})

    if args.get("crash"):
        os._exit(3)
    if args.get("hang"):
        time.sleep(3600)
    time.sleep(args.get("sleep_s", 0))
    if executions == 0:
        time.sleep(args.get("sleep_first_s", 0))
    if args.get("fail") or executions < args.get("fail_times", 0):
        raise RuntimeError(f"failure of {key} on execution {executions + 1}")

    _append({"key": key, "event": "end", "n": executions + 1})


def read_records(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every complete record written so far."""
    path = Path(path or os.environ[RECORDS_ENV])
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line) for line in lines[:-1] if line]


def _append(entry: dict[str, Any]) -> None:
    entry = {**entry, "pid": os.getpid(), "t_ns": time.monotonic_ns()}
    fd = os.open(os.environ[RECORDS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, json.dumps(entry).encode() + b"\n")
    finally:
        os.close(fd)


def starts(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The start records of one job, in the order written."""
    return [r for r in records if r["key"] == key and r["event"] == "start"]


def wait_until(
    predicate: Callable[[], T], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something true; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_s} s")
        time.sleep(0.02)


def jobs_by_key(dsn: str, queue: str = "default") -> dict[str, dict[str, Any]]:
    """The queue's snapshot by key, read on a connection of its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {row["key"]: row for row in refqueue.snapshot(conn, queue)}


def settled(dsn: str, keys: list[str]) -> dict[str, dict[str, Any]] | None:
    """The snapshot once every job of ``keys`` is done or dead, else None."""
    try:
        jobs = jobs_by_key(dsn)
    except psycopg.OperationalError:
        return None  # the server is restarting: ask again
    if all(jobs.get(key, {}).get("state") in ("done", "dead") for key in keys):
        return jobs
    return None


class WorkerProcesses:
    """Worker processes a test starts; ``kill_all`` ends what is left of them.

    Each worker runs in its own session (its own process group, with its job
    processes) and logs to ``<directory>/<name>.log``.
    """

    def __init__(self, dsn: str, directory: Path) -> None:
        self.dsn = dsn
        self.directory = directory
        self.records = directory / "records.jsonl"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *,
        handler: str = "refqueue_handlers:record",
        dsn: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.processes)}"
        command = [
            sys.executable,
            "-m",
            "refqueue",
            "worker",
            "--dsn",
            dsn or self.dsn,
            "--handler",
            handler,
            "--name",
            name,
        ]
        for option, value in {**FAST, **options}.items():
            flag = "--" + option.replace("_", "-")
            if value is True:
                command.append(flag)
            elif value is not None and value is not False:
                command += [flag, str(value)]
        with open(self.log_path(name), "wb") as log:
            process = subprocess.Popen(
                command,
                env=self.env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        process.name = name  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def env(self) -> dict[str, str]:
        path = [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in path if p),
            RECORDS_ENV: str(self.records),
        }

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def log(self, process: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
        """The JSON log records the worker wrote so far."""
        lines = self.log_path(process.name).read_text().splitlines()  # type: ignore
        return [json.loads(line) for line in lines if line.startswith("{")]

    def messages(self, process: subprocess.Popen[bytes]) -> list[str]:
        return [record["message"] for record in self.log(process)]

    def read_records(self) -> list[dict[str, Any]]:
        return read_records(self.records)

    def kill_all(self) -> None:
        # The whole group: job processes too, even where the worker is gone.
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
