"""Worker processes: start, kill, pause, resume, replace and reap them.

Each worker runs the adapter's command in its own process group, so a signal
reaches the worker and every child it forked (a job running in a child
process included). A worker dies with the harness. Every process gets a new
name (`worker-0`, `worker-1`, ...): a replacement is another worker in the
history, which is how executions are tied to the process that ran them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness import _proc
from harness.history import History

log = logging.getLogger("queue_chaos.workers")

CommandFor = Callable[[str], list[str]]


@dataclass
class Worker:
    """One worker process and what the harness did to it."""

    name: str
    process: subprocess.Popen
    paused: bool = False
    killed: bool = False
    handled: bool = False  # its exit is recorded and its replacement decided
    started_ns: int = field(default_factory=time.monotonic_ns)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def __repr__(self) -> str:
        state = "paused" if self.paused else "alive" if self.alive else "exited"
        return f"<Worker {self.name} pid={self.pid} {state}>"


class WorkerPool:
    """N worker processes kept alive the way a deployment would keep them."""

    def __init__(
        self,
        command_for: CommandFor,
        *,
        size: int,
        history: History,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.command_for = command_for
        self.size = size
        self.history = history
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.workers: list[Worker] = []
        self._next = 0
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<WorkerPool {len(self.running())}/{self.size} running>"

    def running(self) -> list[Worker]:
        """Workers whose process has not exited (paused ones included)."""
        return [w for w in self.workers if w.alive]

    def active(self) -> list[Worker]:
        """Workers that run and are not paused."""
        return [w for w in self.workers if w.alive and not w.paused]

    def paused(self) -> list[Worker]:
        return [w for w in self.workers if w.alive and w.paused]

    def start(self) -> None:
        """Start workers until `size` of them are running."""
        with self._lock:
            while len(self.running()) < self.size:
                self._spawn()

    def _spawn(self, replaces: Worker | None = None) -> Worker:
        name = f"worker-{self._next}"
        self._next += 1
        env = {**os.environ, **self.env, "QUEUE_CHAOS_WORKER": name}
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
        try:
            process = _proc.spawn(
                self.command_for(name),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        worker = Worker(name, process)
        self.workers.append(worker)
        op = {"f": "worker", "type": "info", "process": name, "worker": name,
              "pid": process.pid, "event": "start"}
        if replaces is not None:
            op["event"] = "replace"
            op["replaces"] = replaces.name
        self.history.append(op)
        log.debug("worker started", extra={"worker": name, "pid": process.pid})
        return worker

    def pick(self, rng: random.Random, *, paused: bool = False) -> Worker | None:
        """A worker chosen by rng among the active (or the paused) ones."""
        with self._lock:
            choices = self.paused() if paused else self.active()
            return rng.choice(choices) if choices else None

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker's process group; returns once it is reaped."""
        with self._lock:
            worker.killed = True
            _proc.signal_group(worker.pid, signal.SIGKILL)
            worker.process.wait()
            worker.paused = False
            self._record_exit(worker)

    def pause(self, worker: Worker) -> None:
        """SIGSTOP the worker's process group; returns once it is stopped."""
        with self._lock:
            _proc.signal_group(worker.pid, signal.SIGSTOP)
            worker.paused = True
            _wait_stopped(worker.pid)

    def resume(self, worker: Worker) -> None:
        """SIGCONT the worker's process group."""
        with self._lock:
            _proc.signal_group(worker.pid, signal.SIGCONT)
            worker.paused = False

    def resume_all(self) -> list[Worker]:
        with self._lock:
            resumed = self.paused()
            for worker in resumed:
                self.resume(worker)
            return resumed

    def supervise(self) -> list[Worker]:
        """Record workers that exited by themselves and replace every lost one.

        A worker the harness killed is replaced too: a deployment restarts
        what died, whatever killed it. Returns the replacements.
        """
        with self._lock:
            replaced = []
            for worker in list(self.workers):
                if worker.alive or worker.handled:
                    continue
                worker.handled = True
                if not worker.killed:
                    self._record_exit(worker)
                if len(self.running()) < self.size:
                    replaced.append(self._spawn(replaces=worker))
            _proc.reap_orphans()
            return replaced

    def _record_exit(self, worker: Worker) -> None:
        self.history.append({
            "f": "worker", "type": "info", "process": worker.name,
            "worker": worker.name, "pid": worker.pid, "event": "exit",
            "returncode": worker.process.returncode,
            "cause": "killed" if worker.killed else "exited",
        })

    def stop(self, *, grace_s: float = 10.0) -> list[Worker]:
        """SIGTERM every worker, wait up to grace_s, then SIGKILL the rest.

        A worker's process group is SIGKILLed in any case once it has exited,
        so no job process it left behind outlives it.

        Returns the workers that had to be killed; a warning names them.
        """
        with self._lock:
            self.resume_all()
            running = self.running()
            # SIGTERM goes to the worker alone, as an orchestrator sends it to
            # the main process: the worker decides what its job processes do.
            for worker in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            forced = []
            for worker in running:
                try:
                    worker.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    forced.append(worker)
                    worker.killed = True
                    _proc.signal_group(worker.pid, signal.SIGKILL)
                    worker.process.wait()
                self._record_exit(worker)
                worker.handled = True
            for worker in running:
                # children of a worker that outlived it, in its group
                _proc.signal_group(worker.pid, signal.SIGKILL)
            if forced:
                log.warning("workers ignored SIGTERM and were killed", extra={
                    "workers": [w.name for w in forced], "grace_s": grace_s})
            _proc.reap_orphans()
            return forced


def _wait_stopped(pid: int, timeout_s: float = 5.0) -> None:
    """Wait until a process and its descendants all show as stopped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
            stopped = (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
            if all(p.status() in stopped for p in members):
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.005)
