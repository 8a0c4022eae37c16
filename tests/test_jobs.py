"""Job behaviours: parsing, expected outcomes, and each one run in a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.adapters.base import Semantics
from harness.errors import UsageError
from harness.jobs import (
    CRASH_EXIT_STATUS,
    EFFECT_INSERT_SQL,
    ENV_WORKER,
    Behaviour,
    JobFailed,
    execute,
    expected_outcome,
)
from harness.ledger import ENV_LEDGER, Ledger

RUN_JOB = (
    "import json, sys; from harness.jobs import execute; "
    "execute(json.loads(sys.argv[1]))"
)


def wait_for(condition, *, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout_s} s")
        time.sleep(0.005)


def start_job(ledger_dir, key, behaviour, worker="worker-0"):
    env = {**os.environ, ENV_LEDGER: str(ledger_dir), ENV_WORKER: worker}
    args = json.dumps({"key": key, "behaviour": behaviour})
    return subprocess.Popen(
        [sys.executable, "-c", RUN_JOB, args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_job(ledger_dir, key, behaviour):
    process = start_job(ledger_dir, key, behaviour)
    _, stderr = process.communicate(timeout=20)
    return process.returncode, stderr


def events(ledger_dir):
    return [(r["key"], r["n"], r["event"]) for r in Ledger(ledger_dir).read()]


@pytest.fixture
def job_env(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_LEDGER, str(tmp_path))
    monkeypatch.setenv(ENV_WORKER, "worker-7")
    return tmp_path


@pytest.mark.parametrize(
    ("text", "behaviour"),
    [
        ("ok", Behaviour("ok")),
        ("slow:0.25", Behaviour("slow", seconds=0.25)),
        ("slow:2", Behaviour("slow", seconds=2.0)),
        ("fail_first:2", Behaviour("fail", first=2)),
        ("fail_always", Behaviour("fail")),
        ("crash_first:1", Behaviour("crash", first=1)),
        ("crash_first:3:segv", Behaviour("crash", first=3, segv=True)),
        ("crash_always", Behaviour("crash")),
        ("crash_always:segv", Behaviour("crash", segv=True)),
        ("hang_first:0", Behaviour("hang", first=0)),
        ("hang_always", Behaviour("hang")),
    ],
)
def test_a_behaviour_string_parses_and_formats_back(text, behaviour):
    assert Behaviour.parse(text) == behaviour
    assert str(behaviour) == text
    assert Behaviour.parse(behaviour) is behaviour


@pytest.mark.parametrize(
    "text",
    [
        "",
        "okay",
        "ok:1",
        "slow",
        "slow:soon",
        "slow:-1",
        "slow:nan",
        "fail_first",
        "fail_first:-1",
        "fail_first:1.5",
        "fail_first:²",
        "fail_always:segv",
        "hang_first:1:segv",
        "crash_first:1:segfault",
        "crash_sometimes",
        3,
        None,
    ],
)
def test_a_bad_behaviour_names_the_value_and_the_accepted_forms(text):
    with pytest.raises(UsageError) as raised:
        Behaviour.parse(text)

    message = str(raised.value)
    assert message.startswith(f"job behaviour {text!r} is not understood")
    assert "fail_first:K, fail_always, crash_first:K[:segv]" in message


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "fail", "first": -2},
        {"kind": "fail", "first": "2"},
        {"kind": "ok", "first": 1},
        {"kind": "slow", "seconds": "1"},
        {"kind": "hang", "seconds": 1.0},
        {"kind": "fail", "segv": True},
        {"kind": "explode"},
    ],
)
def test_a_behaviour_built_by_hand_is_checked_too(fields):
    with pytest.raises(UsageError, match="is not a job behaviour"):
        Behaviour(**fields)


@pytest.mark.parametrize(
    ("behaviour", "no_timeout", "with_timeout"),
    [
        ("ok", "done", "done"),
        ("slow:2", "done", "dead"),
        ("slow:0.5", "done", "done"),
        ("fail_first:2", "done", "done"),
        ("fail_first:3", "dead", "dead"),
        ("fail_always", "dead", "dead"),
        ("crash_first:2:segv", "done", "done"),
        ("crash_always", "dead", "dead"),
        ("hang_first:0", "done", "done"),
        ("hang_first:2", None, "done"),
        ("hang_first:3", None, "dead"),
        ("hang_always", None, "dead"),
    ],
)
def test_the_expected_outcome_follows_attempts_and_job_timeout(
    behaviour, no_timeout, with_timeout
):
    untimed = Semantics(max_attempts=3, lease_s=5.0)
    timed = Semantics(max_attempts=3, lease_s=5.0, job_timeout_s=1.0)

    assert expected_outcome(behaviour, untimed) == no_timeout
    assert expected_outcome(behaviour, timed) == with_timeout


def test_an_ok_job_records_start_then_ok(tmp_path):
    returncode, stderr = run_job(tmp_path, "j1", "ok")

    assert (returncode, stderr) == (0, "")
    assert events(tmp_path) == [("j1", 1, "start"), ("j1", 1, "ok")]
    assert {r["worker"] for r in Ledger(tmp_path).read()} == {"worker-0"}


def test_fail_first_fails_then_succeeds(tmp_path):
    first = run_job(tmp_path, "j1", "fail_first:1")
    second = run_job(tmp_path, "j1", "fail_first:1")

    assert first[0] == 1
    assert "JobFailed: j1 failed on execution 1 as fail_first:1 asks" in first[1]
    assert second == (0, "")
    assert events(tmp_path) == [
        ("j1", 1, "start"),
        ("j1", 1, "fail"),
        ("j1", 2, "start"),
        ("j1", 2, "ok"),
    ]
    failure = Ledger(tmp_path).read()[1]
    assert failure["error"] == (
        "JobFailed: j1 failed on execution 1 as fail_first:1 asks"
    )


def test_a_crash_exits_without_an_end_record_then_the_next_run_succeeds(tmp_path):
    crashed = run_job(tmp_path, "j1", "crash_first:1")
    second = run_job(tmp_path, "j1", "crash_first:1")

    assert crashed == (CRASH_EXIT_STATUS, "")
    assert second == (0, "")
    assert events(tmp_path) == [("j1", 1, "start"), ("j1", 2, "start"), ("j1", 2, "ok")]


def test_a_segv_crash_is_a_real_segmentation_fault(tmp_path):
    returncode, _ = run_job(tmp_path, "j1", "crash_always:segv")

    assert returncode == -signal.SIGSEGV
    assert events(tmp_path) == [("j1", 1, "start")]


def test_a_hanging_job_stays_alive_after_its_start_is_recorded(tmp_path):
    process = start_job(tmp_path, "j1", "hang_always")
    try:
        wait_for(lambda: events(tmp_path), what="the hanging job's start")
        assert process.poll() is None
    finally:
        process.kill()
        process.communicate(timeout=10)

    assert process.returncode == -signal.SIGKILL
    assert events(tmp_path) == [("j1", 1, "start")]


def test_a_slow_job_takes_its_time(job_env):
    started_ns = time.monotonic_ns()

    execute({"key": "j1", "behaviour": "slow:0.05"})

    assert time.monotonic_ns() - started_ns >= 50_000_000
    assert events(job_env) == [("j1", 1, "start"), ("j1", 1, "ok")]


def test_fail_always_fails_every_execution(job_env):
    for _ in range(2):
        with pytest.raises(JobFailed):
            execute({"key": "j1", "behaviour": "fail_always"})

    assert events(job_env) == [
        ("j1", 1, "start"),
        ("j1", 1, "fail"),
        ("j1", 2, "start"),
        ("j1", 2, "fail"),
    ]
    assert {r["worker"] for r in Ledger(job_env).read()} == {"worker-7"}


class StatementRecorder:
    """Stands where the job's connection goes; notes what the ledger had by then."""

    def __init__(self, ledger_dir, failure=None):
        self.ledger_dir = ledger_dir
        self.failure = failure
        self.calls = []

    def execute(self, query, params):
        self.calls.append((query, params, events(self.ledger_dir)))
        if self.failure is not None:
            raise self.failure


def test_the_effect_is_written_on_the_connection_before_ok(job_env):
    conn = StatementRecorder(job_env)

    execute({"key": "j1", "behaviour": "ok"}, conn)

    assert conn.calls == [(EFFECT_INSERT_SQL, ("j1", 1), [("j1", 1, "start")])]
    assert events(job_env) == [("j1", 1, "start"), ("j1", 1, "ok")]


def test_an_effect_that_cannot_be_written_fails_the_execution(job_env):
    conn = StatementRecorder(job_env, failure=RuntimeError("connection closed"))

    with pytest.raises(RuntimeError):
        execute({"key": "j1", "behaviour": "ok"}, conn)

    records = Ledger(job_env).read()
    assert [(r["n"], r["event"]) for r in records] == [(1, "start"), (1, "fail")]
    assert records[1]["error"] == "RuntimeError: connection closed"


def test_a_failing_job_writes_no_effect(job_env):
    conn = StatementRecorder(job_env)

    with pytest.raises(JobFailed):
        execute({"key": "j1", "behaviour": "fail_first:1"}, conn)

    assert conn.calls == []


def test_a_job_without_its_worker_name_is_refused(job_env, monkeypatch):
    monkeypatch.delenv(ENV_WORKER)

    with pytest.raises(UsageError, match="QUEUE_CHAOS_WORKER is not set"):
        execute({"key": "j1", "behaviour": "ok"})
    assert events(job_env) == []


def test_job_arguments_without_a_key_are_refused(job_env):
    with pytest.raises(UsageError, match="lack 'key' or 'behaviour'"):
        execute({"behaviour": "ok"})
