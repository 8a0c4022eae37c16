"""Connections of workers and job processes: bounded connect and statement times."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger("refqueue.worker")

# libpq waits this long for a server that accepts connections but never answers.
_CONNECT_TIMEOUT_S = 5


def connect(dsn: str) -> psycopg.Connection[Any]:
    """Open an autocommit connection, giving up after a bounded time."""
    options = (
        {}
        if "connect_timeout" in conninfo_to_dict(dsn)
        else {"connect_timeout": _CONNECT_TIMEOUT_S}
    )
    return psycopg.connect(dsn, autocommit=True, **options)


def describe_dsn(dsn: str) -> str:
    """The DSN as it may be shown in a message: any password masked."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return repr(dsn)
    if "password" in params:
        params["password"] = "***"
    return repr(make_conninfo(**params))


class Watchdog:
    """Breaks the connection of a statement that outlives its deadline.

    A frozen server, or a proxy that drops what it should forward, leaves a
    statement waiting for an answer that never comes, and a TCP connection to
    a local proxy never times out by itself. Shutting the socket down turns
    the wait into a connection loss, from which a worker recovers.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._changed = threading.Condition()
        self._armed: tuple[float, int] | None = None
        # When the watching thread next wakes up by itself; None: only when told.
        self._wakes_at_s: float | None = None
        thread = threading.Thread(target=self._watch, name=repr(self), daemon=True)
        thread.start()

    def __repr__(self) -> str:
        return f"<Watchdog limit_s={self.limit_s}>"

    @contextmanager
    def guard(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Break ``conn`` if the statements in this block outlast ``limit_s``."""
        fd = conn.pgconn.socket
        deadline_s = time.monotonic() + self.limit_s
        with self._changed:
            self._armed = (deadline_s, fd)
            # A thread that wakes up by itself before this deadline looks again
            # then; waking it for every statement would cost two thread
            # switches each time.
            if self._wakes_at_s is None or self._wakes_at_s > deadline_s:
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._armed = None

    def _watch(self) -> None:
        with self._changed:
            while True:
                if self._armed is None:
                    self._wakes_at_s = None
                    self._changed.wait()
                    continue
                deadline_s, fd = self._armed
                remaining_s = deadline_s - time.monotonic()
                if remaining_s > 0:
                    self._wakes_at_s = deadline_s
                    self._changed.wait(remaining_s)
                    continue
                self._armed = None
                log.warning(
                    "statement deadline passed", extra={"limit_s": self.limit_s}
                )
                _shut_down(fd)


def _shut_down(fd: int) -> None:
    # Shut down a duplicate: the connection's own descriptor stays open for
    # psycopg to find broken and close.
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the statement has failed by itself
