"""The ledger under real processes, kills and pauses, and the history built from it."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest

from harness.errors import ReportError, UsageError
from harness.history import History
from harness.ledger import ENV_LEDGER, Ledger

# A writer that records executions of key "k" as fast as it can and prints
# each ordinal once both its records are written.
WRITER = """\
import sys
import threading
from harness.ledger import Ledger
ledger = Ledger(sys.argv[1])
for _ in range(int(sys.argv[2])):
    n = ledger.start("k", worker=sys.argv[3])
    ledger.finish("k", n, "ok", worker=sys.argv[3])
    print(n, flush=True)
"""


def start_writer(directory, count, worker, *, deadline_s=20.0):
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(count), worker],
        stdout=subprocess.PIPE,
        text=True,
    )
    # Reading its output blocks; a writer past its deadline is killed, so a
    # broken writer fails the test instead of hanging it.
    process.deadline = threading.Timer(deadline_s, process.kill)
    process.deadline.start()
    return process


def stop(process):
    process.deadline.cancel()
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    process.stdout.close()


def claim_many(directory, keys, claims, barrier):
    ledger = Ledger(directory)
    barrier.wait(timeout=30)
    for index in range(claims):
        key = keys[index % len(keys)]
        n = ledger.start(key, worker=f"worker-{os.getpid()}")
        ledger.finish(key, n, "ok", worker=f"worker-{os.getpid()}")


def test_ordinals_are_exact_under_concurrent_claims(tmp_path):
    processes_n, claims_n, keys = 8, 200, ("a", "b")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes_n)
    processes = [
        context.Process(target=claim_many, args=(tmp_path, keys, claims_n, barrier))
        for _ in range(processes_n)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0] * processes_n
    records = Ledger(tmp_path).read()
    per_key = processes_n * claims_n // len(keys)
    for key in keys:
        starts = [r["n"] for r in records if r["key"] == key and r["event"] == "start"]
        assert sorted(starts) == list(range(1, per_key + 1))
    expected = {f"{key}.{n}" for key in keys for n in range(1, per_key + 1)}
    assert set(os.listdir(tmp_path / "ordinals")) == expected
    assert len(list(tmp_path.glob("*.jsonl"))) == processes_n
    assert Counter(r["event"] for r in records) == {"start": 1600, "ok": 1600}


def test_a_killed_writer_loses_nothing_already_written(tmp_path):
    writer = start_writer(tmp_path, 1_000_000, "worker-0")
    try:
        printed = 0
        while printed < 100:
            printed = int(writer.stdout.readline())
        writer.send_signal(signal.SIGKILL)
        for line in writer.stdout:
            printed = int(line)
    finally:
        stop(writer)

    assert writer.returncode == -signal.SIGKILL
    ledger = Ledger(tmp_path)
    records = ledger.read()
    finished = [r["n"] for r in records if r["event"] == "ok"]
    started = [r["n"] for r in records if r["event"] == "start"]
    assert finished[:printed] == list(range(1, printed + 1))
    assert started == list(range(1, len(started) + 1))
    assert len(started) >= printed
    assert ledger.torn_lines == 0


def test_a_paused_writer_blocks_no_other_writer(tmp_path):
    paused = start_writer(tmp_path, 1_000_000, "worker-0")
    try:
        paused.stdout.readline()
        paused.send_signal(signal.SIGSTOP)

        other = start_writer(tmp_path, 50, "worker-1")
        try:
            other.wait(timeout=20)
            ordinals = [int(line) for line in other.stdout]
        finally:
            stop(other)
    finally:
        paused.send_signal(signal.SIGCONT)
        stop(paused)

    assert other.returncode == 0
    assert len(ordinals) == 50
    records = Ledger(tmp_path).read()
    mine = [r["n"] for r in records if r["worker"] == "worker-1" and r["event"] == "ok"]
    assert mine == ordinals
    starts = [r["n"] for r in records if r["event"] == "start"]
    assert len(set(starts)) == len(starts)


def test_a_torn_last_line_is_skipped_and_counted(tmp_path):
    ledger = Ledger(tmp_path)
    n = ledger.start("k", worker="worker-0")
    (tmp_path / "999-deadbeef.jsonl").write_bytes(b'{"t": 5, "key": "k", "n": 2, "ev')

    records = ledger.read()

    assert [(r["key"], r["n"], r["event"]) for r in records] == [("k", n, "start")]
    assert ledger.torn_lines == 1


def test_a_broken_line_before_the_last_is_an_error(tmp_path):
    (tmp_path / "999-deadbeef.jsonl").write_bytes(b'{"t": 5, "ke\n{"t": 6}\n')

    with pytest.raises(ReportError, match="999-deadbeef.jsonl has a broken record"):
        Ledger(tmp_path).read()


def test_records_carry_time_process_and_error(tmp_path):
    ledger = Ledger(tmp_path)

    n = ledger.start("j1", worker="worker-3")
    ledger.finish("j1", n, "fail", worker="worker-3", error="JobFailed: boom")

    start, end = ledger.read()
    assert start["t"] < end["t"]
    assert {k: v for k, v in end.items() if k != "t"} == {
        "key": "j1",
        "n": 1,
        "event": "fail",
        "worker": "worker-3",
        "error": "JobFailed: boom",
        "pid": os.getpid(),
    }


def test_unfinished_executions_are_those_without_an_end(tmp_path):
    ledger = Ledger(tmp_path)
    done = ledger.start("a", worker="w1")
    ledger.finish("a", done, "ok", worker="w1")
    failed = ledger.start("a", worker="w2")
    ledger.finish("a", failed, "fail", worker="w2")
    running = ledger.start("a", worker="w1")
    killed = ledger.start("b", worker="w2")

    unfinished = ledger.unfinished()

    assert sorted(unfinished) == [("a", running), ("b", killed)]
    assert unfinished[("a", running)]["worker"] == "w1"
    assert unfinished[("b", killed)]["worker"] == "w2"


def test_one_process_writes_one_file_however_many_ledger_objects(tmp_path):
    for _ in range(3):
        Ledger(tmp_path).start("k", worker="worker-0")

    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    assert [r["n"] for r in Ledger(tmp_path).read()] == [1, 2, 3]


@pytest.mark.parametrize("key", ["", "a/b", ".hidden", "x" * 201, None])
def test_a_key_that_cannot_name_a_file_is_refused(tmp_path, key):
    with pytest.raises(UsageError, match="cannot be used in the ledger"):
        Ledger(tmp_path).start(key, worker="worker-0")


def test_an_unknown_outcome_or_ordinal_is_refused(tmp_path):
    with pytest.raises(UsageError, match="'done' is not one of ok, fail"):
        Ledger(tmp_path).finish("k", 1, "done", worker="worker-0")
    with pytest.raises(UsageError, match="ordinal 0 must be an integer >= 1"):
        Ledger(tmp_path).finish("k", 0, "ok", worker="worker-0")


def test_the_ledger_comes_from_the_environment(tmp_path):
    assert Ledger.from_env({ENV_LEDGER: str(tmp_path)}).directory == tmp_path
    with pytest.raises(UsageError, match="QUEUE_CHAOS_LEDGER is not set"):
        Ledger.from_env({})


def test_ledger_records_become_execute_ops_once(tmp_path):
    ledger = Ledger(tmp_path)
    n = ledger.start("j1", worker="worker-2")
    ledger.finish("j1", n, "fail", worker="worker-2", error="JobFailed: x")
    history = History()

    assert history.add_ledger(ledger.read()) == 2
    assert history.add_ledger(ledger.read()) == 0

    ops = history.ops()
    assert [(op["f"], op["type"], op["process"], op["n"]) for op in ops] == [
        ("execute", "invoke", "worker-2", 1),
        ("execute", "fail", "worker-2", 1),
    ]
    assert ops[1]["error"] == "JobFailed: x"
    assert ops[1]["pid"] == os.getpid()


def test_a_history_streams_every_op_and_loads_back(tmp_path):
    path = tmp_path / "history.jsonl"
    with History(path) as history:
        first = history.append({"process": "runner", "f": "phase", "type": "info"})
        earlier = {"t": first["t"] - 1, "process": "client-0", "f": "enqueue"}
        history.append({**earlier, "type": "invoke", "key": "j1", "behaviour": "ok"})
        assert len(path.read_text().splitlines()) == 2

    loaded = History.load(path)

    assert loaded.complete is True
    assert [op["f"] for op in loaded.ops()] == ["enqueue", "phase"]
    assert loaded.ops() == history.ops()
    assert list(loaded.by_key()) == ["j1"]


def test_a_history_with_a_torn_last_line_loads_incomplete(tmp_path):
    path = tmp_path / "history.jsonl"
    op = {"t": 1, "process": "runner", "f": "phase", "type": "info"}
    path.write_text(json.dumps(op) + "\n" + '{"t": 2, "proc')

    loaded = History.load(path)

    assert loaded.complete is False
    assert loaded.ops() == [op]


def test_a_history_refuses_to_record_over_another_run(tmp_path):
    (tmp_path / "history.jsonl").write_text("")

    with pytest.raises(ReportError, match="exists already"):
        History(tmp_path / "history.jsonl")


def test_a_malformed_op_is_refused():
    with pytest.raises(UsageError, match="'type' must be one of"):
        History().append({"process": "runner", "f": "phase", "type": "done"})
