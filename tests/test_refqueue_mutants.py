"""refqueue's mutants: the registry, and each job-table mutant broken as it says."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

import refqueue
from refqueue import LeaseLost
from refqueue import mutants as m
from refqueue.jobs import Jobs
from refqueue.queries import QUERIES
from refqueue.worker import Worker

NAMES = [
    "ack_before_work",
    "async_commit_enqueue",
    "attempts_on_exception_only",
    "claim_without_lock",
    "client_clock_lease",
    "dead_letter_deletes",
    "delete_on_claim",
    "enqueue_commits",
    "gives_up_one_early",
    "listen_without_poll",
    "no_heartbeat",
    "no_job_timeout",
    "no_lease_expiry",
    "no_reconnect",
    "no_retry_limit",
    "retry_limit_off_by_one",
    "unfenced_completion",
]


@pytest.fixture
def conn(pg_dsn: str) -> Any:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        refqueue.install(conn)
        yield conn


def claim(jobs: Jobs, conn: Any, worker: str = "w") -> list[refqueue.Job]:
    return jobs.claim(conn, queue="default", worker=worker, limit=1, lease_s=60).jobs


def expire_leases(conn: Any) -> None:
    conn.execute(
        "UPDATE refqueue_jobs SET lease_expires_at = now() - interval '1 second' "
        "WHERE state = 'running'"
    )


# The registry --------------------------------------------------------------------


def test_the_registry_holds_every_named_mutant() -> None:
    assert sorted(m.MUTANTS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_mutant_is_one_described_change_to_seams_that_exist(name: str) -> None:
    mutant = m.MUTANTS[name]

    assert mutant.failure_case in {"F1", "F2", "F3", "F4", "F5", "F6"}
    assert mutant.description and "\n" not in mutant.description
    assert mutant.seams
    assert all(query in QUERIES for query in mutant.queries)
    assert all(hasattr(Jobs, method) for method in mutant.jobs_methods)
    assert all(hasattr(Worker, method) for method in mutant.worker_methods)
    assert mutant.diff(name)


def test_every_mutant_query_replaces_a_query_of_its_mutant_and_changes_it() -> None:
    entries = set(m._MUTANT_QUERIES)
    replacing = {
        f"{name}.{query}"
        for name, mutant in m.MUTANTS.items()
        for query in mutant.queries
    }

    # client_clock_lease's query is run by its replacement method instead.
    assert entries == replacing | {"client_clock_lease.claim"}
    for entry in replacing:
        original = QUERIES[entry.split(".")[1]].text
        assert m._MUTANT_QUERIES[entry].text != original, entry


@pytest.mark.parametrize("name", NAMES)
def test_a_mutant_changes_nothing_but_its_seams(name: str) -> None:
    mutant = m.MUTANTS[name]
    jobs = m.jobs_for(name)
    worker_class = m.worker_class_for(name)

    for query in QUERIES:
        replaced = query in mutant.queries
        assert (jobs.queries[query] == QUERIES[query]) is not replaced
    for method in ("enqueue", "claim", "heartbeat", "complete", "fail", "snapshot"):
        replaced = method in mutant.jobs_methods
        assert (getattr(type(jobs), method) is getattr(Jobs, method)) is not replaced
    for method in ("start_job", "kill_overdue_jobs", "poll_due", "schedule_reconnect"):
        replaced = method in mutant.worker_methods
        assert (
            getattr(worker_class, method) is getattr(Worker, method)
        ) is not replaced


def test_a_mutant_is_selected_by_name_or_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(m.ENV_VAR, raising=False)
    assert m.selected(None) is None
    assert m.jobs_for(None).queries is QUERIES
    assert m.worker_class_for(None) is Worker

    monkeypatch.setenv(m.ENV_VAR, "no_heartbeat")
    assert m.selected(None) == "no_heartbeat"
    assert m.selected("no_retry_limit") == "no_retry_limit"

    with pytest.raises(refqueue.ConfigError, match="unknown mutant 'nonsense'"):
        m.selected("nonsense")


# Each job-table mutant on a real database -------------------------------------------


def test_delete_on_claim_leaves_no_row_behind(conn: Any) -> None:
    refqueue.enqueue(conn, {}, key="j")

    [job] = claim(m.jobs_for("delete_on_claim"), conn)

    assert job.key == "j"
    assert refqueue.snapshot(conn) == []


def test_no_lease_expiry_never_claims_a_job_whose_worker_is_gone(conn: Any) -> None:
    jobs = m.jobs_for("no_lease_expiry")
    refqueue.enqueue(conn, {}, key="j")
    claim(jobs, conn)
    expire_leases(conn)

    assert claim(jobs, conn) == []
    assert claim(Jobs(), conn) != []


def test_claim_without_lock_hands_one_job_to_two_workers(
    pg_dsn: str, conn: Any
) -> None:
    jobs = m.jobs_for("claim_without_lock")
    refqueue.enqueue(conn, {}, key="j")
    second_claim: list[refqueue.Job] = []

    with psycopg.connect(pg_dsn) as first:
        [held] = claim(jobs, first, worker="a")  # the row stays locked until commit
        waiting = threading.Thread(
            target=lambda: second_claim.extend(claim(jobs, conn, worker="b"))
        )
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive(), "the second claim waits on the row instead"
        first.commit()
    waiting.join(timeout=10)

    assert [job.id for job in second_claim] == [held.id]
    assert second_claim[0].lease_token != held.lease_token


def test_unfenced_completion_lets_a_stale_lease_complete(conn: Any) -> None:
    jobs = m.jobs_for("unfenced_completion")
    refqueue.enqueue(conn, {}, key="j")
    [stale] = claim(jobs, conn, worker="paused")
    expire_leases(conn)
    claim(jobs, conn, worker="other")

    jobs.complete(conn, stale)

    assert refqueue.snapshot(conn)[0]["state"] == "done"
    with pytest.raises(LeaseLost):
        Jobs().complete(conn, stale)


def test_attempts_on_exception_only_does_not_count_a_lost_execution(conn: Any) -> None:
    jobs = m.jobs_for("attempts_on_exception_only")
    refqueue.enqueue(conn, {}, key="j", max_attempts=1)
    claim(jobs, conn)
    expire_leases(conn)
    [again] = claim(jobs, conn)

    assert refqueue.snapshot(conn)[0]["attempts"] == 0
    assert jobs.fail(conn, again, error="boom", retry_in_s=0) == "dead"
    assert refqueue.snapshot(conn)[0]["attempts"] == 1


def test_no_retry_limit_retries_a_job_out_of_attempts(conn: Any) -> None:
    jobs = m.jobs_for("no_retry_limit")
    refqueue.enqueue(conn, {}, key="j", max_attempts=1)
    [job] = claim(jobs, conn)

    assert jobs.fail(conn, job, error="boom", retry_in_s=0) == "ready"
    assert claim(jobs, conn)[0].attempt == 2


def test_dead_letter_deletes_the_job_it_should_keep_dead(conn: Any) -> None:
    jobs = m.jobs_for("dead_letter_deletes")
    refqueue.enqueue(conn, {}, key="j", max_attempts=1)
    [job] = claim(jobs, conn)

    assert jobs.fail(conn, job, error="boom", retry_in_s=0) == "dead"
    assert refqueue.snapshot(conn) == []


def test_async_commit_enqueue_turns_off_synchronous_commit(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as client:
        refqueue.install(client)
        client.commit()
        refqueue.enqueue(client, {}, key="sync")
        assert client.execute("SHOW synchronous_commit").fetchone() == ("on",)
        client.rollback()

        refqueue.enqueue(client, {}, key="async", mutant="async_commit_enqueue")
        assert client.execute("SHOW synchronous_commit").fetchone() == ("off",)
        client.commit()
        assert client.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_client_clock_lease_hands_out_expired_leases_from_a_slow_clock(
    conn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SlowClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) - timedelta(minutes=5)

    monkeypatch.setattr(m, "datetime", SlowClock)
    jobs = m.jobs_for("client_clock_lease")
    refqueue.enqueue(conn, {}, key="j")

    [first] = claim(jobs, conn, worker="slow-clock")
    [second] = claim(Jobs(), conn, worker="other")

    assert second.id == first.id


def test_no_heartbeat_reports_leases_held_without_extending_them(conn: Any) -> None:
    jobs = m.jobs_for("no_heartbeat")
    refqueue.enqueue(conn, {}, key="j")
    [job] = jobs.claim(conn, queue="default", worker="w", limit=1, lease_s=0.5).jobs

    assert jobs.heartbeat(conn, [job], lease_s=60) == {job.id}
    [remaining_s] = conn.execute(
        "SELECT extract(epoch FROM lease_expires_at - now()) FROM refqueue_jobs"
    ).fetchone()
    assert remaining_s <= 0.5
