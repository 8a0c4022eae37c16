"""The ephemeral cluster and its server faults, against real server processes."""

import os
import signal
import subprocess
import sys
import time

import psutil
import psycopg
import pytest

from harness import postgres
from harness.errors import BinariesNotFound, PostgresError, ServerFaultRefused


def wait_for(predicate, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def test_a_fresh_database_is_empty_and_separate(pg_server):
    first = pg_server.create_database()
    second = pg_server.create_database()
    try:
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
        with psycopg.connect(second.dsn) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
            ).fetchone()[0]
        assert tables == 0
    finally:
        pg_server.drop_database(first.name)
        pg_server.drop_database(second.name)


def test_the_server_does_not_run_as_root(pg_cluster):
    owner = psutil.Process(pg_cluster.postmaster_pid).username()
    assert owner != "root"


def test_crash_keeps_every_committed_row(pg_cluster, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        for x in range(100):
            conn.execute("INSERT INTO t VALUES (%s)", (x,))
    old_pids = pg_cluster.crash()

    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status()
               == psutil.STATUS_ZOMBIE for pid in old_pids)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 100


def test_a_crash_drops_every_connection(pg_cluster, pg_dsn):
    conn = psycopg.connect(pg_dsn, autocommit=True)
    pg_cluster.crash()

    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()


def _stopped_or_gone(pid: int) -> bool:
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return status in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)


def test_freeze_stops_the_server_and_thaw_resumes_it(pg_cluster, pg_dsn):
    frozen = pg_cluster.freeze()
    try:
        # a backend that was exiting as the freeze came is a zombie: the
        # stopped postmaster cannot collect it, and it runs no more either
        assert frozen and all(_stopped_or_gone(pid) for pid in frozen)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_dsn, connect_timeout=1)
    finally:
        pg_cluster.thaw()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_terminate_backends_cuts_only_that_application(pg_server, pg_dsn):
    victim = psycopg.connect(pg_dsn, autocommit=True, application_name="victim")
    bystander = psycopg.connect(pg_dsn, autocommit=True, application_name="other")
    pids = pg_server.terminate_backends(application_name="victim")

    assert pids == [victim.info.backend_pid]
    with pytest.raises(psycopg.OperationalError):
        victim.execute("SELECT 1")
    assert bystander.execute("SELECT 1").fetchone() == (1,)
    victim.close()
    bystander.close()


def test_stop_then_start_serves_again(pg_cluster, pg_dsn):
    pg_cluster.stop()
    assert not pg_cluster.running
    pg_cluster.start()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_an_external_server_refuses_server_faults(pg_server):
    external = postgres.ExternalServer(pg_server.dsn())
    for fault in (external.crash, external.freeze, external.stop):
        with pytest.raises(ServerFaultRefused, match="without --pg-dsn"):
            fault()
    database = external.create_database()
    external.drop_database(database.name)


def test_an_unreachable_dsn_is_one_clear_error():
    with pytest.raises(PostgresError, match="cannot connect to"):
        postgres.ExternalServer("host=127.0.0.1 port=1 user=postgres connect_timeout=2")


def test_missing_binaries_name_the_folder(tmp_path):
    with pytest.raises(BinariesNotFound, match=str(tmp_path)):
        postgres.find_bindir(tmp_path)


CHILD = """
import sys, time
from harness.postgres import Cluster
cluster = Cluster()
cluster.create()
print(cluster.directory, cluster.postmaster_pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_no_server_outlives_its_harness(sig):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True
    )
    directory, pid = child.stdout.readline().split()
    postmaster = psutil.Process(int(pid))
    child.send_signal(sig)
    child.wait(30)

    wait_for(lambda: not postmaster.is_running()
             or postmaster.status() == psutil.STATUS_ZOMBIE, what="server exit")
    if sig == signal.SIGKILL:
        # the folder is left behind; the next cluster removes it
        assert os.path.isdir(directory)
        postgres.remove_orphans()
    assert not os.path.isdir(directory)
