"""Process plumbing: child subreaper, parent-death signal, and a long-lived launcher.

Linux ties a child's parent-death signal to the *thread* that forked it, so a
process started from a short-lived thread (a nemesis restarting the database,
a supervisor replacing a worker) would be killed when that thread ends. Every
child of the harness is therefore forked by one daemon thread that lives as
long as the harness process does: the children die with the harness, and only
then.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psutil

log = logging.getLogger("queue_chaos.proc")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; True on success."""
    return _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def child_setup(uid: int | None = None, gid: int | None = None) -> Callable[[], None]:
    """A preexec function: drop to uid/gid, then ask for SIGKILL at parent death.

    The parent-death signal is set after the change of credentials because the
    kernel clears it when credentials change.
    """

    def setup() -> None:
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        _die_with_parent()

    return setup


class _Launcher:
    """The one thread that forks every child of the harness."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<launcher thread>"

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            try:
                request.process = subprocess.Popen(request.args, **request.kwargs)
            except BaseException as exc:  # raised again in the caller's thread
                request.error = exc
            request.done.set()

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="queue-chaos-launcher", daemon=True
                )
                self._thread.start()
        request = _Request(list(args), kwargs)
        self._requests.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.process is not None
        return request.process


class _Request:
    def __init__(self, args: list[str], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.done = threading.Event()
        self.process: subprocess.Popen | None = None
        self.error: BaseException | None = None


_launcher = _Launcher()


def spawn(
    args: Sequence[str],
    *,
    uid: int | None = None,
    gid: int | None = None,
    new_group: bool = True,
    **kwargs: Any,
) -> subprocess.Popen:
    """Start a child that dies with the harness, in its own process group."""
    kwargs.setdefault("close_fds", True)
    process = _launcher.popen(
        args,
        preexec_fn=child_setup(uid, gid),
        process_group=0 if new_group else None,
        **kwargs,
    )
    _spawned.add(process.pid)
    return process


_spawned: set[int] = set()


def reap_orphans() -> list[int]:
    """Collect the ended descendants that were left to this process to reap.

    Only processes the harness did not start itself: those belong to their
    `Popen` objects, which must see their own exit status.
    """
    reaped = []
    for child in psutil.Process().children():
        if child.pid in _spawned:
            continue
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE and reap(child.pid) is not None:
                reaped.append(child.pid)
    return reaped


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def reap(pid: int) -> int | None:
    """Collect a child's exit status if it has ended; None while it runs."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)
