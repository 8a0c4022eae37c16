"""refqueue on a real Postgres: enqueue, leases, fencing, real worker processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.pq import TransactionStatus
from refqueue_handlers import (
    TESTS_DIR,
    WorkerProcesses,
    jobs_by_key,
    settled,
    starts,
    wait_until,
)

import refqueue
from refqueue import Jobs, LeaseLost
from refqueue.jobprocess import JobProcess, child_command

JOBS = Jobs()


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        refqueue.install(conn)
    return pg_dsn


@pytest.fixture
def conn(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def workers(dsn: str, tmp_path: Any) -> Any:
    processes = WorkerProcesses(dsn, tmp_path)
    yield processes
    processes.kill_all()


def claim_one(conn: Any, worker: str = "test", lease_s: float = 60.0) -> refqueue.Job:
    [job] = JOBS.claim(
        conn, queue="default", worker=worker, limit=1, lease_s=lease_s
    ).jobs
    return job


def expire_leases(conn: Any) -> None:
    """Stand in for time passing: every lease is now past its expiry."""
    conn.execute(
        "UPDATE refqueue_jobs SET lease_expires_at = now() - interval '1 second' "
        "WHERE state = 'running'"
    )


def row(conn: Any, job_id: int) -> tuple[Any, ...]:
    return conn.execute(
        "SELECT * FROM refqueue_jobs WHERE id = %s", (job_id,)
    ).fetchone()


def process_gone(pid: int) -> bool:
    """Whether a process has ended (a zombie left to the test's subreaper counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def enqueue_committed(
    dsn: str, jobs: dict[str, dict[str, Any]], **options: Any
) -> None:
    with psycopg.connect(dsn) as client:
        for key, args in jobs.items():
            refqueue.enqueue(client, {"key": key, **args}, key=key, **options)
        client.commit()


# Enqueue ---------------------------------------------------------------------------


def test_install_can_run_again_on_an_installed_database(conn: Any) -> None:
    refqueue.install(conn)
    refqueue.install(conn)

    assert refqueue.snapshot(conn) == []


def test_a_job_enqueued_in_a_transaction_that_rolls_back_never_exists(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN refqueue")
        with psycopg.connect(dsn) as client:
            refqueue.enqueue(client, {"n": 1}, key="rolled-back")
            assert client.info.transaction_status == TransactionStatus.INTRANS
            assert jobs_by_key(dsn) == {}
            client.rollback()

            refqueue.enqueue(client, {"n": 2}, key="committed")
            client.commit()

        notified = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]

    assert jobs_by_key(dsn) == {
        "committed": {
            "key": "committed",
            "state": "ready",
            "attempts": 0,
            "max_attempts": 3,
            "last_error": None,
        }
    }
    assert notified == ["default"]


def test_enqueue_refuses_a_bad_max_attempts_naming_the_value(conn: Any) -> None:
    with pytest.raises(refqueue.ConfigError, match=r"max_attempts.*0"):
        refqueue.enqueue(conn, {}, max_attempts=0)


# Leases and fencing ---------------------------------------------------------------


def test_a_stale_lease_token_can_neither_complete_nor_fail_a_job(conn: Any) -> None:
    refqueue.enqueue(conn, {}, key="j")
    first = claim_one(conn, worker="paused")
    expire_leases(conn)
    second = claim_one(conn, worker="other")
    before = row(conn, first.id)

    with pytest.raises(LeaseLost, match="nothing was changed"):
        JOBS.complete(conn, first)
    with pytest.raises(LeaseLost):
        JOBS.fail(conn, first, error="late failure", retry_in_s=0)

    assert row(conn, first.id) == before
    assert (second.id, second.attempt) == (first.id, 2)
    JOBS.complete(conn, second)
    assert refqueue.snapshot(conn)[0]["state"] == "done"


def test_an_expired_lease_cannot_complete_even_if_nobody_claimed_the_job(
    conn: Any,
) -> None:
    refqueue.enqueue(conn, {}, key="j")
    job = claim_one(conn)
    expire_leases(conn)

    with pytest.raises(LeaseLost):
        JOBS.complete(conn, job)

    assert refqueue.snapshot(conn)[0]["state"] == "running"


def test_a_heartbeat_extends_valid_leases_and_leaves_out_lost_ones(conn: Any) -> None:
    for key in ("kept", "lost"):
        refqueue.enqueue(conn, {}, key=key)
    kept, lost = JOBS.claim(conn, queue="default", worker="w", limit=2, lease_s=60).jobs
    conn.execute(
        "UPDATE refqueue_jobs SET lease_expires_at = now() - interval '1 second' "
        "WHERE id = %s",
        (lost.id,),
    )

    still_held = JOBS.heartbeat(conn, [kept, lost], lease_s=120)

    assert still_held == {kept.id}
    [remaining_s] = conn.execute(
        "SELECT extract(epoch FROM lease_expires_at - now()) FROM refqueue_jobs "
        "WHERE id = %s",
        (kept.id,),
    ).fetchone()
    assert 100 < remaining_s <= 120


def test_a_claim_skips_a_job_another_claim_holds_instead_of_waiting(dsn: str) -> None:
    enqueue_committed(dsn, {"j": {}})
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        held = claim_one(first)  # its transaction stays open: the row stays locked

        claimed = JOBS.claim(second, queue="default", worker="b", limit=1, lease_s=60)

        assert claimed.jobs == []
        first.commit()
    assert held.key == "j"


def test_an_expired_lease_on_the_final_attempt_ends_the_job_dead_at_claim(
    conn: Any,
) -> None:
    refqueue.enqueue(conn, {}, key="j", max_attempts=1)
    job = claim_one(conn)
    expire_leases(conn)

    claimed = JOBS.claim(conn, queue="default", worker="w", limit=1, lease_s=60)

    assert claimed.jobs == []
    assert claimed.dead == [refqueue.DeadJob(job.id, "j", 1)]
    [snapshot] = refqueue.snapshot(conn)
    assert snapshot["state"] == "dead"
    assert snapshot["last_error"] == "lease expired during the final attempt"


def test_a_failed_attempt_waits_its_backoff_and_the_last_one_ends_dead(
    conn: Any,
) -> None:
    refqueue.enqueue(conn, {}, key="j", max_attempts=2)
    first = claim_one(conn)

    assert JOBS.fail(conn, first, error="boom 1", retry_in_s=60) == "ready"
    assert JOBS.claim(conn, queue="default", worker="w", limit=1, lease_s=60).jobs == []

    conn.execute("UPDATE refqueue_jobs SET run_after = now()")
    second = claim_one(conn)
    assert JOBS.fail(conn, second, error="boom 2", retry_in_s=60) == "dead"

    [snapshot] = refqueue.snapshot(conn)
    assert snapshot == {
        "key": "j",
        "state": "dead",
        "attempts": 2,
        "max_attempts": 2,
        "last_error": "boom 2",
    }


def test_a_stale_transactional_completion_rolls_back_the_jobs_own_writes(
    conn: Any, dsn: str
) -> None:
    conn.execute("CREATE TABLE effects (key text)")
    refqueue.enqueue(conn, {}, key="j")
    stale = claim_one(conn)
    expire_leases(conn)
    claim_one(conn)

    with (
        psycopg.connect(dsn, autocommit=True) as job_conn,
        pytest.raises(LeaseLost),
        job_conn.transaction(),
    ):
        job_conn.execute("INSERT INTO effects VALUES ('j')")
        JOBS.complete(job_conn, stale)

    assert conn.execute("SELECT count(*) FROM effects").fetchone() == (0,)


# Workers ------------------------------------------------------------------------------


def test_two_workers_never_hold_the_same_job_at_once(dsn: str, workers: Any) -> None:
    keys = [f"j{i:02}" for i in range(60)]
    enqueue_committed(dsn, {key: {"sleep_s": 0.01} for key in keys})

    for _ in range(3):
        workers.start(concurrency=2, lease_s=3.0)
    jobs = wait_until(lambda: settled(dsn, keys), timeout_s=30, what="all jobs done")

    records = workers.read_records()
    assert {key: jobs[key]["state"] for key in keys} == {key: "done" for key in keys}
    assert {key: jobs[key]["attempts"] for key in keys} == {key: 1 for key in keys}
    assert {key: len(starts(records, key)) for key in keys} == {key: 1 for key in keys}
    assert len({r["pid"] for r in records}) > 1, "the jobs were shared out"


def test_a_worker_killed_mid_job_leaves_it_to_be_claimed_after_its_lease_expires(
    dsn: str, workers: Any
) -> None:
    enqueue_committed(dsn, {"j": {"sleep_first_s": 30}})
    victim = workers.start(lease_s=1.0)
    wait_until(lambda: starts(workers.read_records(), "j"), what="first execution")

    with psycopg.connect(dsn, autocommit=True) as conn:
        [lease_left_s] = conn.execute(
            "SELECT extract(epoch FROM lease_expires_at - now()) FROM refqueue_jobs"
        ).fetchone()
    killed_ns = time.monotonic_ns()
    os.killpg(victim.pid, signal.SIGKILL)
    workers.start(lease_s=1.0)
    jobs = wait_until(lambda: settled(dsn, ["j"]), what="the job done elsewhere")

    first, second = starts(workers.read_records(), "j")
    assert jobs["j"]["state"] == "done"
    assert jobs["j"]["attempts"] == 2
    assert (second["t_ns"] - killed_ns) / 1e9 >= float(lease_left_s) - 0.05
    assert process_gone(first["pid"])


def test_a_worker_killed_alone_takes_its_job_processes_with_it(
    dsn: str, workers: Any
) -> None:
    enqueue_committed(dsn, {"j": {"hang": True}})
    worker = workers.start()
    [start] = wait_until(lambda: starts(workers.read_records(), "j"), what="execution")

    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    wait_until(
        lambda: process_gone(start["pid"]), timeout_s=5, what="job process ended"
    )


def test_a_job_past_its_timeout_is_killed_and_counted_as_a_failed_attempt(
    dsn: str, workers: Any
) -> None:
    enqueue_committed(dsn, {"hangs": {"hang": True}}, max_attempts=2)

    workers.start(job_timeout_s=0.5)
    jobs = wait_until(lambda: settled(dsn, ["hangs"]), what="the job dead")

    executions = starts(workers.read_records(), "hangs")
    assert jobs["hangs"]["state"] == "dead"
    assert jobs["hangs"]["attempts"] == 2
    assert jobs["hangs"]["last_error"] == "job timed out after 0.5 s"
    assert len(executions) == 2
    assert all(process_gone(e["pid"]) for e in executions)


def test_failing_jobs_end_dead_after_exactly_max_attempts_with_their_last_error(
    dsn: str, workers: Any
) -> None:
    enqueue_committed(
        dsn,
        {
            "always-fails": {"fail": True},
            "always-crashes": {"crash": True},
            "fails-twice": {"fail_times": 2},
        },
    )

    workers.start(concurrency=3)
    jobs = wait_until(lambda: settled(dsn, list(jobs_by_key(dsn))), what="settled")

    records = workers.read_records()
    assert {key: (job["state"], job["attempts"]) for key, job in jobs.items()} == {
        "always-fails": ("dead", 3),
        "always-crashes": ("dead", 3),
        "fails-twice": ("done", 3),
    }
    assert {key: len(starts(records, key)) for key in jobs} == {
        "always-fails": 3,
        "always-crashes": 3,
        "fails-twice": 3,
    }
    assert jobs["always-fails"]["last_error"] == (
        "RuntimeError: failure of always-fails on execution 3"
    )
    assert jobs["always-crashes"]["last_error"] == "job process died: exit status 3"


def test_a_stopped_worker_finishes_its_job_within_the_grace_period(
    dsn: str, workers: Any
) -> None:
    enqueue_committed(dsn, {"short": {"sleep_s": 0.5}})
    worker = workers.start(grace_s=5.0)
    wait_until(lambda: starts(workers.read_records(), "short"), what="execution")

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0
    assert jobs_by_key(dsn)["short"]["state"] == "done"
    assert workers.messages(worker)[-2:] == ["worker stopping", "worker stopped"]


def test_a_stopped_worker_releases_a_job_still_running_after_the_grace_period(
    dsn: str, workers: Any
) -> None:
    enqueue_committed(dsn, {"long": {"hang": True}})
    worker = workers.start(grace_s=0.3)
    wait_until(lambda: starts(workers.read_records(), "long"), what="execution")

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=10) == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        claimed = JOBS.claim(conn, queue="default", worker="next", limit=1, lease_s=60)
    assert [job.key for job in claimed.jobs] == ["long"]
    assert claimed.jobs[0].attempt == 2
    assert "jobs released" in workers.messages(worker)


def test_a_transactional_worker_commits_a_jobs_writes_with_its_completion(
    dsn: str, workers: Any
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (key text)")
    enqueue_committed(
        dsn, {"ok": {}, "fails-once": {"fail_times": 1}, "bad": {"fail": True}}
    )

    workers.start(handler="refqueue_handlers:record_in_transaction", transactional=True)
    jobs = wait_until(lambda: settled(dsn, ["ok", "fails-once", "bad"]), what="settled")

    with psycopg.connect(dsn) as conn:
        effects = dict(conn.execute("SELECT key, count(*) FROM effects GROUP BY key"))
    assert {key: job["state"] for key, job in jobs.items()} == {
        "ok": "done",
        "fails-once": "done",
        "bad": "dead",
    }
    assert effects == {"ok": 1, "fails-once": 1}


# Job processes ----------------------------------------------------------------


def read_until(process: JobProcess, predicate: Any, timeout_s: float = 10.0) -> Any:
    """Read what the child writes until ``predicate(outcome)`` holds; return it."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        readable, _, _ = select.select([process], [], [], 0.1)
        outcome = process.read_outcome() if readable else None
        if predicate(outcome):
            return outcome
    raise AssertionError(f"the job process did not get there within {timeout_s} s")


def test_a_job_process_takes_jobs_only_once_it_said_it_started() -> None:
    command = child_command(
        handler="json:dumps", transactional=False, dsn="", mutant=None
    )
    process = JobProcess(command)
    job = refqueue.Job(1, "k", "default", {"a": 1}, 1, 3, uuid.uuid4())
    try:
        process.ensure_started()
        assert process.alive and not process.available
        read_until(process, lambda outcome: process.available)

        process.start(job, timeout_s=10.0)
        assert not process.available
        outcome = read_until(process, lambda outcome: outcome is not None)
        assert (outcome.job, outcome.kind) == (job, "ok")
        assert process.available

        # A replacement for a killed child starts over.
        process.kill()
        assert not process.available
        process.ensure_started()
        assert not process.available
        read_until(process, lambda outcome: process.available)
    finally:
        process.kill()


# The worker's command line --------------------------------------------------


def run_worker_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    env.pop("REFQUEUE_MUTANT", None)
    return subprocess.run(
        [sys.executable, "-m", "refqueue", "worker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--handler", "no_such_module:run"], "no_such_module"),
        (["--handler", "refqueue_handlers:no_such_function"], "no_such_function"),
        (["--handler", "refqueue_handlers"], "module:function"),
        (["--job-timeout-s", "0"], "--job-timeout-s 0"),
        (["--lease-s", "-1"], "--lease-s -1"),
        (["--heartbeat-s", "5", "--lease-s", "5"], "--heartbeat-s 5.0"),
        (["--concurrency", "0"], "--concurrency 0"),
        (["--mutant", "no_such_mutant"], "no_such_mutant"),
        (["--lease-s", "soon"], "soon"),
    ],
)
def test_bad_worker_input_exits_2_with_one_line_naming_it(
    dsn: str, options: list[str], named: str
) -> None:
    args = ["--dsn", dsn, "--handler", "refqueue_handlers:record", *options]

    result = run_worker_command(*args)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert named in result.stderr


def test_an_unreachable_dsn_exits_2_with_one_line_naming_it() -> None:
    dsn = "host=127.0.0.1 port=1 dbname=nowhere connect_timeout=2"

    result = run_worker_command("--dsn", dsn, "--handler", "refqueue_handlers:record")

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert (
        "port=1" in result.stderr
        and "check that the server is running" in result.stderr
    )


def test_a_database_without_the_schema_exits_2_and_creates_nothing(pg_dsn: str) -> None:
    result = run_worker_command(
        "--dsn", pg_dsn, "--handler", "refqueue_handlers:record"
    )

    assert result.returncode == 2
    assert "python -m refqueue install" in result.stderr
    with psycopg.connect(pg_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'refqueue%%'"
        ).fetchone()
    assert tables == (0,)
