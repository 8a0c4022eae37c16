"""Worker supervision and the nemesis's worker faults, on real processes."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from harness.history import History
from harness.nemesis import NOTHING, Nemesis, Window
from harness.workers import WorkerPool

# A stand-in worker: a process that forks a child (as a job would) and runs
# until told to stop, exiting 0 on SIGTERM.
WORKER = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if os.fork() == 0:
        time.sleep(600)
    while True:
        time.sleep(0.05)
""")


def command(name):
    return [sys.executable, "-c", WORKER]


def wait_for(predicate, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


@pytest.fixture
def pool():
    history = History()
    pool = WorkerPool(command, size=2, history=history)
    pool.start()
    yield pool
    pool.stop(grace_s=2)


def group_members(pgid):
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def test_a_killed_worker_is_replaced_and_both_are_recorded(pool):
    victim = pool.workers[0]
    pool.kill(victim)

    replacements = pool.supervise()

    assert [w.name for w in replacements] == ["worker-2"]
    assert len(pool.running()) == 2
    events = [(op["event"], op["worker"]) for op in pool.history.ops()]
    assert events == [
        ("start", "worker-0"), ("start", "worker-1"),
        ("exit", "worker-0"), ("replace", "worker-2"),
    ]


def test_killing_a_worker_kills_the_children_it_forked(pool):
    victim = pool.workers[0]
    wait_for(lambda: len(group_members(victim.pid)) == 2, what="job child forked")
    pool.kill(victim)

    wait_for(lambda: all(p.status() == psutil.STATUS_ZOMBIE
                         for p in group_members(victim.pid)),
             what="the whole group gone")


def test_a_paused_worker_and_its_children_are_stopped_until_resumed(pool):
    worker = pool.workers[0]
    wait_for(lambda: len(group_members(worker.pid)) == 2, what="job child forked")
    pool.pause(worker)

    assert all(p.status() == psutil.STATUS_STOPPED
               for p in group_members(worker.pid))
    pool.resume(worker)
    wait_for(lambda: all(p.status() != psutil.STATUS_STOPPED
                         for p in group_members(worker.pid)), what="resumed")


def test_stop_is_gentle_first(pool):
    for worker in pool.workers:  # each has its SIGTERM handler once it forked
        wait_for(lambda: len(group_members(worker.pid)) == 2, what="started")
    forced = pool.stop(grace_s=5)

    assert forced == []
    assert all(w.process.returncode == 0 for w in pool.workers)


def test_a_fault_with_nothing_to_act_on_is_still_recorded():
    history = History()
    pool = WorkerPool(command, size=0, history=history)
    nemesis = Nemesis(history=history, pool=pool, server=None, database="db",
                      rng=random.Random(1))
    active = nemesis.start(Window(0, "kill-worker"))
    nemesis.heal(active)

    faults = [(op["type"], op["fault"], op.get("effect")) for op in history.ops()]
    assert faults == [("invoke", "kill-worker", NOTHING), ("info", "kill-worker", None)]


def test_a_schedule_pauses_then_heals_on_time(pool):
    nemesis = Nemesis(history=pool.history, pool=pool, server=None, database="db",
                      rng=random.Random(3))
    stop = threading.Event()
    nemesis.run([Window(0.1, "pause-worker", 0.3)], stop, time.monotonic())

    ops = [op for op in pool.history.ops() if op["f"] == "fault"]
    assert [op["type"] for op in ops] == ["invoke", "info"]
    assert 0.25 <= (ops[1]["t"] - ops[0]["t"]) / 1e9 < 5
    assert pool.paused() == []


HARNESS = textwrap.dedent("""
    import sys
    from harness.history import History
    from harness.workers import WorkerPool
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    pool = WorkerPool(lambda name: sleeper, size=3, history=History())
    pool.start()
    print(" ".join(str(w.pid) for w in pool.workers), flush=True)
    sys.stdin.read()
""")


def test_no_worker_outlives_a_sigkilled_harness():
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )
    pids = [int(p) for p in harness.stdout.readline().split()]
    harness.send_signal(signal.SIGKILL)
    harness.wait()

    def gone(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(pid) for pid in pids), what="workers gone")
