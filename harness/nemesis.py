"""Faults and fault schedules; every fault is recorded in the history.

A fault has a start and a heal. The nemesis records both as ops (`f: fault`,
invoke at the start, info at the heal, paired by `id`), with the targets it
acted on, and says so when it found nothing to act on: a kill with no worker
alive is still an entry in the history. Schedules are lists of windows, fixed
or drawn from a seed.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import importlib.util
import itertools
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness import _proc
from harness.errors import UsageError
from harness.history import History
from harness.ledger import ENV_LEDGER, Ledger

log = logging.getLogger("queue_chaos.nemesis")

ACTED = "acted"
NOTHING = "nothing to act on"

SERVER_FAULTS = ("crash-db", "freeze-db", "restart-db")
WORKER_FAULTS = ("kill-worker", "pause-worker", "pause-all-workers", "stall-worker")
NETWORK_FAULTS = (
    "partition", "blackhole", "latency", "bandwidth", "reset-peer", "limit-data",
)
# Faults on a worker's clock: a correct queue takes its time from the database.
CLOCK_FAULTS = ("skew-clock",)
FAULTS = (
    WORKER_FAULTS + SERVER_FAULTS + ("terminate-backends",) + NETWORK_FAULTS
    + CLOCK_FAULTS
)
SIDES = ("workers", "clients", "both")

# How far the wall clock of a skew-clock worker runs ahead of the real one;
# far beyond any drain, so a lease computed from it outlives the run.
CLOCK_SKEW_S = 300
# How long before its heal a stalled worker's job processes go on without it.
STALL_LAG_S = 1.0
# How long the heal of a skew-clock fault waits for its worker to start a
# job before killing it, and how often it looks.
SKEWED_KILL_WAIT_S = 6.0
SKEWED_POLL_S = 0.01
FAKETIME_ENV = "QUEUE_CHAOS_LIBFAKETIME"


def faketime_library() -> Path:
    """The libfaketime shared library that skews a worker's wall clock.

    In order: ``$QUEUE_CHAOS_LIBFAKETIME``, the one the ``libfaketime`` Python
    package ships (a dependency), Debian's ``libfaketime`` package. Raises
    UsageError, saying how to get one, when there is none.
    """
    candidates = []
    if os.environ.get(FAKETIME_ENV):
        candidates.append(Path(os.environ[FAKETIME_ENV]))
    spec = importlib.util.find_spec("libfaketime")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location, "vendor/libfaketime/src/libfaketime.so.1"))
    candidates += map(Path, sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError(
        "skew-clock needs libfaketime: `pip install libfaketime`, "
        f"`apt-get install libfaketime`, or set {FAKETIME_ENV} to libfaketime.so.1"
    )


@dataclass(frozen=True, order=True)
class Window:
    """One fault: started `at_s` after the load starts, healed `duration_s` later.

    `side` says which proxy a network fault acts on: the workers', the
    clients', or both.
    """

    at_s: float
    fault: str
    duration_s: float = 0.0
    side: str = "workers"

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise UsageError(
                f"unknown fault {self.fault!r}; choose one of {', '.join(FAULTS)}"
            )
        if self.at_s < 0 or self.duration_s < 0:
            raise UsageError(
                f"fault window {self.fault} at {self.at_s} s for "
                f"{self.duration_s} s: times must be >= 0"
            )
        if self.side not in SIDES:
            raise UsageError(
                f"unknown side {self.side!r} for {self.fault}; "
                f"choose one of {', '.join(SIDES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"at_s": self.at_s, "fault": self.fault,
                "duration_s": self.duration_s, "side": self.side}


def random_schedule(
    rng: random.Random,
    *,
    duration_s: float,
    faults: Sequence[str],
    gap_s: tuple[float, float] = (0.5, 2.0),
    length_s: tuple[float, float] = (0.3, 3.0),
) -> list[Window]:
    """Windows one after another over duration_s, kinds and times from rng."""
    if not faults:
        return []
    windows = []
    t_s = rng.uniform(*gap_s)
    while t_s < duration_s:
        fault = rng.choice(list(faults))
        length = round(rng.uniform(*length_s), 3)
        side = rng.choice(SIDES) if fault in NETWORK_FAULTS else "workers"
        windows.append(Window(round(t_s, 3), fault, length, side))
        t_s += length + rng.uniform(*gap_s)
    return windows


@dataclass
class _Active:
    id: int
    window: Window
    targets: list[str]
    heal: Callable[[], None] | None
    healed: bool = False


@dataclass
class Nemesis:
    """Injects faults into the workers, the server and the network, and heals them.

    `server` is the Postgres server (faults that need its processes are
    recorded as refused when it is external), `pool` the workers, `database`
    the name of the queue's database, `proxies` a mapping of side to the
    network-fault controller of that side (None without network faults).
    """

    history: History
    pool: Any
    server: Any
    database: str
    rng: random.Random
    proxies: dict[str, Any] | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _skewed: itertools.count = field(default_factory=lambda: itertools.count(1))
    _active: list[_Active] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __repr__(self) -> str:
        return f"<Nemesis {len(self.active())} active>"

    def active(self) -> list[_Active]:
        return [a for a in self._active if not a.healed]

    def start(self, window: Window) -> _Active:
        """Start one fault now and record it; returns its handle for heal."""
        with self._lock:
            fault_id = next(self._ids)
            started = getattr(self, "_start_" + window.fault.replace("-", "_"))
            try:
                targets, heal = started(window)
                effect = ACTED if targets else NOTHING
                error = None
            except Exception as exc:  # a refused fault is a fact of the run
                targets, heal, effect = [], None, "refused"
                error = f"{type(exc).__name__}: {exc}"
                log.warning("fault refused", extra={
                    "fault": window.fault, "error": error})
            op = {
                "f": "fault", "type": "invoke", "process": "nemesis",
                "id": fault_id, "fault": window.fault, "targets": targets,
                "effect": effect, "duration_s": window.duration_s,
            }
            if window.fault in NETWORK_FAULTS:
                op["side"] = window.side
            if error:
                op["error"] = error
            self.history.append(op)
            active = _Active(fault_id, window, targets, heal)
            self._active.append(active)
            log.info("fault started", extra={
                "fault": window.fault, "targets": targets, "effect": effect})
            return active

    def heal(self, active: _Active) -> None:
        """Undo one fault and record its end."""
        with self._lock:
            if active.healed:
                return
            active.healed = True
            error = None
            if active.heal is not None:
                try:
                    active.heal()
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.error("heal failed", extra={
                        "fault": active.window.fault, "error": error})
            op = {
                "f": "fault", "type": "info", "process": "nemesis",
                "id": active.id, "fault": active.window.fault,
                "targets": active.targets,
            }
            if error:
                op["error"] = error
            self.history.append(op)

    def heal_all(self) -> None:
        """Heal every fault still active, newest first."""
        with self._lock:
            for active in reversed(self.active()):
                self.heal(active)

    def run(
        self, windows: Sequence[Window], stop: threading.Event, t0_s: float
    ) -> None:
        """Play a schedule relative to t0_s (a time.monotonic() value).

        Returns when every window has started and healed, or when stop is set;
        faults still active then are left for heal_all.
        """
        events: list[tuple[float, int, Window | _Active]] = []
        order = itertools.count()
        for window in windows:
            heapq.heappush(events, (t0_s + window.at_s, next(order), window))
        while events and not stop.is_set():
            at_s, _, item = events[0]
            if stop.wait(max(0.0, at_s - time.monotonic())):
                return
            heapq.heappop(events)
            if isinstance(item, Window):
                active = self.start(item)
                heal_at = time.monotonic() + item.duration_s
                heapq.heappush(events, (heal_at, next(order), active))
            else:
                self.heal(item)

    # Worker faults -----------------------------------------------------

    def _start_kill_worker(self, window: Window):
        # a worker that holds no job would test nothing: aim at a busy one
        worker = self._pick_busy()
        if worker is None:
            return [], None
        self.pool.kill(worker)
        return [worker.name], None

    def _start_pause_worker(self, window: Window):
        worker = self._pick_busy()
        if worker is None:
            return [], None
        self.pool.pause(worker)
        return [worker.name], lambda: self.pool.resume(worker)

    def _start_stall_worker(self, window: Window):
        """Freeze a worker's host, then thaw its job processes before its loop.

        The worker and its job processes are stopped together (SIGSTOP); in
        the window's last STALL_LAG_S the job processes go on while the worker
        itself stays stopped, as when a thawed host schedules the job threads
        before a loop that is still stuck. Its jobs then finish without
        anyone heartbeating or checking their leases; the heal resumes it.
        """
        worker = self._pick_busy()
        if worker is None:
            return [], None
        self.pool.pause(worker)
        lag_s = min(STALL_LAG_S, window.duration_s / 2)
        thaw = threading.Timer(
            window.duration_s - lag_s, self._thaw_job_processes, (worker,)
        )
        thaw.daemon = True
        thaw.start()

        def heal() -> None:
            thaw.cancel()
            if worker.alive and worker.paused:
                self.pool.resume(worker)

        return [worker.name], heal

    def _pick_busy(self) -> Any:
        """An active worker running a job (the ledger says which), else any.

        Workers run without a ledger (no QUEUE_CHAOS_LEDGER) are all alike.
        """
        if not (self.pool.env or {}).get(ENV_LEDGER):
            return self.pool.pick(self.rng)
        unfinished = Ledger.from_env(self.pool.env).unfinished().values()
        busy = {record.get("worker") for record in unfinished}
        choices = [w for w in self.pool.active() if w.name in busy]
        return self.rng.choice(choices) if choices else self.pool.pick(self.rng)

    def _thaw_job_processes(self, worker: Any) -> None:
        with self._lock:
            if not (worker.alive and worker.paused):
                return
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(worker.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.send_signal(signal.SIGCONT)

    def _start_pause_all_workers(self, window: Window):
        # Nothing commits while every worker stands still: only the clients'
        # transactions reach the server, and nobody else flushes the WAL.
        workers = self.pool.active()
        for worker in workers:
            self.pool.pause(worker)

        def heal() -> None:
            for worker in workers:
                if worker.alive and worker.paused:
                    self.pool.resume(worker)

        return [w.name for w in workers], (heal if workers else None)

    # Clock faults ------------------------------------------------------

    def _start_skew_clock(self, window: Window):
        """A worker whose wall clock runs CLOCK_SKEW_S ahead joins, then dies.

        It runs the pool's command under libfaketime (only its wall clock is
        skewed; the monotonic clock that orders the history is not), and is
        SIGKILLed from the heal on, with whatever it holds, as a host with a
        wrong clock that crashes. Its jobs must come back after a lease timed
        by the database, not by its clock.
        """
        library = faketime_library()
        name = f"worker-skewed-{next(self._skewed)}"
        preload = " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))
        env = {
            **os.environ, **self.pool.env, "QUEUE_CHAOS_WORKER": name,
            "LD_PRELOAD": preload, "FAKETIME": f"{CLOCK_SKEW_S:+d}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        out: Any = subprocess.DEVNULL
        if self.pool.log_dir is not None:
            self.pool.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.pool.log_dir / f"{name}.log", "ab")
        try:
            process = _proc.spawn(
                self.pool.command_for(name), env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.history.append({
            "f": "worker", "type": "info", "process": name, "worker": name,
            "pid": process.pid, "event": "start", "clock_skew_s": CLOCK_SKEW_S,
        })
        return [name], lambda: self._kill_skewed(name, process)

    def _kill_skewed(self, name: str, process: subprocess.Popen) -> None:
        """SIGKILL a skewed worker while it runs a job it just started.

        The ledger says when: an execution of the worker that started after
        the heal began and has not ended. Such a job holds the lease its claim
        computed, which no heartbeat has renewed yet. Without one within
        SKEWED_KILL_WAIT_S the worker is killed all the same.
        """
        ledger = Ledger.from_env(self.pool.env)

        def running() -> set[tuple[str, int]]:
            return {
                execution for execution, record in ledger.unfinished().items()
                if record.get("worker") == name
            }

        before = running()
        deadline = time.monotonic() + SKEWED_KILL_WAIT_S
        while time.monotonic() < deadline and process.poll() is None:
            if running() - before:
                break
            time.sleep(SKEWED_POLL_S)
        _proc.signal_group(process.pid, signal.SIGKILL)
        process.wait()
        _proc.reap_orphans()
        self.history.append({
            "f": "worker", "type": "info", "process": name, "worker": name,
            "pid": process.pid, "event": "exit", "returncode": process.returncode,
            "cause": "killed",
        })

    # Server faults -----------------------------------------------------

    def _start_crash_db(self, window: Window):
        self.server.crash(restart=False)
        return ["db"], self._start_server

    def _start_restart_db(self, window: Window):
        self.server.stop()
        return ["db"], self._start_server

    def _start_server(self) -> None:
        if not self.server.running:
            self.server.start()

    def _start_freeze_db(self, window: Window):
        self.server.freeze()
        return ["db"], self.server.thaw

    def _start_terminate_backends(self, window: Window):
        pids = self.server.terminate_backends(dbname=self.database)
        return (["db"] if pids else []), None

    # Network faults ----------------------------------------------------

    def _network(self, window: Window, toxic: dict[str, Any] | None):
        if not self.proxies:
            raise UsageError(
                f"{window.fault} needs the fault proxy; this run has no proxies"
            )
        sides = ("workers", "clients") if window.side == "both" else (window.side,)
        healers = []
        targets = []
        for side in sides:
            proxy = self.proxies[side]
            healers.append(proxy.inject(window.fault, toxic, self.rng))
            targets.append(f"proxy:{side}")

        def heal() -> None:
            for undo in healers:
                undo()

        return targets, heal

    def _start_partition(self, window: Window):
        return self._network(window, None)

    def _start_blackhole(self, window: Window):
        return self._network(window, {"type": "timeout", "attributes": {"timeout": 0}})

    def _start_latency(self, window: Window):
        latency_ms = self.rng.choice([100, 200, 300])
        return self._network(window, {"type": "latency", "attributes": {
            "latency": latency_ms, "jitter": latency_ms // 2}})

    def _start_bandwidth(self, window: Window):
        return self._network(window, {"type": "bandwidth", "attributes": {"rate": 16}})

    def _start_reset_peer(self, window: Window):
        return self._network(window, {"type": "reset_peer", "attributes": {
            "timeout": self.rng.choice([0, 50, 200])}})

    def _start_limit_data(self, window: Window):
        return self._network(window, {"type": "limit_data", "attributes": {
            "bytes": self.rng.randint(200, 4000)}})
