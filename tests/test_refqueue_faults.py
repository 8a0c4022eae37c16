"""refqueue workers under server faults: crash and restart, cut connections, hangs."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from refqueue_handlers import WorkerProcesses, jobs_by_key, settled, wait_until

import refqueue
from refqueue.connection import Watchdog

WORKER_APP = "refqueue-test-worker"


@pytest.fixture
def database(pg_database: Any) -> Any:
    with psycopg.connect(pg_database.dsn, autocommit=True) as conn:
        refqueue.install(conn)
    return pg_database


@pytest.fixture
def workers(database: Any, tmp_path: Any) -> Any:
    processes = WorkerProcesses(database.dsn, tmp_path)
    yield processes
    processes.kill_all()


def enqueue_one(dsn: str, key: str) -> None:
    with psycopg.connect(dsn) as client:
        refqueue.enqueue(client, {"key": key}, key=key)
        client.commit()


def test_a_worker_recovers_by_itself_from_a_database_crash_and_restart(
    pg_cluster: Any, database: Any, workers: Any
) -> None:
    worker = workers.start()
    enqueue_one(database.dsn, "before")
    wait_until(lambda: settled(database.dsn, ["before"]), what="first job done")

    pg_cluster.crash()
    enqueue_one(database.dsn, "after")
    jobs = wait_until(
        lambda: settled(database.dsn, ["after"]), timeout_s=20, what="job done"
    )

    assert jobs["after"]["state"] == "done"
    assert worker.poll() is None
    messages = workers.messages(worker)
    assert messages.index("connection lost") < messages.index("reconnected")


def test_a_worker_whose_connection_is_terminated_reconnects_and_keeps_its_job(
    pg_server: Any, database: Any, workers: Any
) -> None:
    worker = workers.start(dsn=make_conninfo(database.dsn, application_name=WORKER_APP))
    with psycopg.connect(database.dsn) as client:
        refqueue.enqueue(client, {"key": "running", "sleep_s": 0.5}, key="running")
        client.commit()
    wait_until(workers.read_records, what="the job started")

    pg_server.terminate_backends(application_name=WORKER_APP)
    enqueue_one(database.dsn, "later")
    jobs = wait_until(
        lambda: settled(database.dsn, ["running", "later"]), what="both jobs done"
    )

    # The lease outlived the short gap: the running job was not run again.
    assert (jobs["running"]["state"], jobs["running"]["attempts"]) == ("done", 1)
    assert jobs["later"]["state"] == "done"
    assert "reconnected" in workers.messages(worker)


def test_a_notification_lost_while_the_worker_was_cut_off_does_not_strand_a_job(
    pg_server: Any, database: Any, workers: Any
) -> None:
    worker = workers.start(dsn=make_conninfo(database.dsn, application_name=WORKER_APP))
    wait_until(lambda: "worker started" in workers.messages(worker), what="started")

    with psycopg.connect(database.dsn) as client:
        with _connections_refused(pg_server, database.name):
            pg_server.terminate_backends(application_name=WORKER_APP)
            wait_until(
                lambda: "connection lost" in workers.messages(worker), what="cut off"
            )
            # Committed while no worker listens: its notification reaches nobody.
            refqueue.enqueue(client, {"key": "unheard"}, key="unheard")
            client.commit()
        jobs = wait_until(
            lambda: settled(database.dsn, ["unheard"]), what="the job found by polling"
        )

    assert jobs["unheard"]["state"] == "done"
    assert "reconnected" in workers.messages(worker)


class _connections_refused:
    """While inside, the database accepts no new connections (existing ones stay)."""

    def __init__(self, server: Any, dbname: str) -> None:
        self._server = server
        self._dbname = dbname

    def __enter__(self) -> None:
        self._allow(False)

    def __exit__(self, *exc: object) -> None:
        self._allow(True)

    def _allow(self, allowed: bool) -> None:
        statement = sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(self._dbname), sql.Literal(allowed)
        )
        with psycopg.connect(self._server.dsn(), autocommit=True) as conn:
            conn.execute(statement)


def test_a_crash_of_the_server_keeps_every_committed_enqueue(
    pg_cluster: Any, database: Any
) -> None:
    acknowledged: list[str] = []
    unknown: list[str] = []
    stop = threading.Event()

    def enqueue_until_the_crash() -> None:
        with psycopg.connect(database.dsn) as client:
            for n in range(100_000):
                key = f"j{n:05}"
                try:
                    refqueue.enqueue(client, {"key": key}, key=key)
                    client.commit()
                except psycopg.OperationalError:
                    unknown.append(key)  # the commit may or may not have happened
                    return
                acknowledged.append(key)
                if stop.is_set():
                    return

    client = threading.Thread(target=enqueue_until_the_crash)
    client.start()
    wait_until(lambda: len(acknowledged) >= 200, what="enqueues under way")
    pg_cluster.crash()
    stop.set()
    client.join(timeout=10)

    stored = set(jobs_by_key(database.dsn))
    assert not set(acknowledged) - stored, "acknowledged enqueues lost by the crash"
    assert len(unknown) <= 1


def test_the_watchdog_breaks_a_statement_that_outlives_its_deadline(
    database: Any,
) -> None:
    watchdog = Watchdog(limit_s=0.3)
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        started_s = time.monotonic()
        with pytest.raises(psycopg.OperationalError), watchdog.guard(conn):
            conn.execute("SELECT pg_sleep(30)")
        elapsed_s = time.monotonic() - started_s

        assert conn.closed
    assert 0.3 <= elapsed_s < 5


def test_the_watchdog_breaks_a_late_statement_after_quick_ones_it_let_pass(
    database: Any,
) -> None:
    watchdog = Watchdog(limit_s=0.3)
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        # Quick statements leave the watching thread asleep until their
        # deadlines, and the long one is armed without waking it.
        for _ in range(3):
            with watchdog.guard(conn):
                conn.execute("SELECT pg_sleep(0.15)")
        assert not conn.closed

        started_s = time.monotonic()
        with pytest.raises(psycopg.OperationalError), watchdog.guard(conn):
            conn.execute("SELECT pg_sleep(30)")
        elapsed_s = time.monotonic() - started_s

        assert conn.closed
    assert 0.3 <= elapsed_s < 5
