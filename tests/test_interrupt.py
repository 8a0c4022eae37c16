"""A scenario run that is interrupted leaves no process behind and no mess."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness import postgres

pytestmark = pytest.mark.slow

SCENARIO = "scenarios/test_f3_worker_kill.py"


def wait_for(predicate, timeout_s=60.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def gone(proc):
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants(proc):
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL],
                         ids=["ctrl-c", "sigkill"])
def test_an_interrupted_scenario_run_leaves_no_process(tmp_path, sig):
    root = Path(__file__).resolve().parent.parent
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", SCENARIO, "-q", "-p", "no:cacheprovider",
         "--reports", str(tmp_path)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_interruptible,
    )
    parent = psutil.Process(run.pid)

    def busy():
        names = " ".join(" ".join(p.cmdline()) for p in descendants(parent)
                         if not gone(p))
        return "postgres" in names and "refqueue" in names

    wait_for(busy, what="postgres and workers running")
    started = [p for p in descendants(parent) if not gone(p)]
    run.send_signal(sig)
    run.wait(60)

    wait_for(lambda: all(gone(p) for p in started), what="every process gone")
    if sig == signal.SIGKILL:
        # a killed run cannot clean up its folder; the next run does
        postgres.remove_orphans()
    assert clusters_of(run.pid) == []


def test_ctrl_c_stops_a_command_line_run_at_once_and_keeps_its_partial_report(
    tmp_path,
):
    run = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "f3-worker-killed", "-q",
         "--reports", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_interruptible,
    )
    parent = psutil.Process(run.pid)
    wait_for(lambda: list(tmp_path.glob("*/history.jsonl")), what="the run started")
    wait_for(
        lambda: sum("refqueue" in " ".join(p.cmdline())
                    for p in descendants(parent) if not gone(p)) >= 2,
        what="workers running",
    )
    started = [p for p in descendants(parent) if not gone(p)]

    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)

    assert run.returncode == 130, out
    assert "interrupted" in out
    wait_for(lambda: all(gone(p) for p in started), what="every process gone")
    assert clusters_of(run.pid) == []
    (results,) = tmp_path.glob("*/results.json")
    assert json.loads(results.read_text())["complete"] is False


def _interruptible():
    # A shell starts background commands with SIGINT ignored, and a process
    # keeps what it inherits: give the run Ctrl-C as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clusters_of(pid):
    owned = []
    for owner in postgres._ROOT_DIR.glob("cluster-*/owner.json"):
        if json.loads(owner.read_text())["pid"] == pid:
            owned.append(owner.parent)
    return owned
