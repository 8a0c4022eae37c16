"""One scenario run: set up, load, faults, heal, drain, check, report.

Every run ends the same way: heal every fault, make sure the configured
number of workers is alive, wait for the queue to drain (bounded by a
deadline computed from the adapter's semantics), stop the workers gently,
take the queue's final snapshot, check the history against it, and write the
report. An interrupted run still writes a report of what it had, marked
incomplete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from harness import report
from harness.adapters import Adapter, get_adapter
from harness.checker import Verdict, check
from harness.errors import UsageError
from harness.history import History
from harness.ledger import Ledger
from harness.nemesis import Nemesis, Window, random_schedule
from harness.scenarios import Scenario, behaviour_for
from harness.workers import WorkerPool

log = logging.getLogger("queue_chaos.runner")

TERMINAL = ("done", "dead", "missing")
ENQUEUE_DEADLINE_S = 10.0
SNAPSHOT_EVERY_S = 0.25

Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class RunResult:
    """What a run found, and where its report is."""

    verdict: Verdict
    report_dir: Path
    scenario: str
    adapter: str
    seed: int
    complete: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """The verdict, each anomaly's story, and the report's path, as text."""
        return report.summary(self)


def schedule_for(scenario: Scenario, seed: int) -> list[Window]:
    """The fault windows of a run: fixed, or drawn from the seed."""
    if scenario.random_faults:
        return random_schedule(
            random.Random(f"{seed}:schedule"),
            duration_s=scenario.duration_s,
            faults=scenario.random_faults,
        )
    return list(scenario.faults)


def drain_deadline_s(adapter: Adapter, scenario: Scenario) -> float:
    """How long a correct queue may take to finish every job after the heal.

    Each attempt may take the job timeout (or the slowest behaviour, or a lease
    when a worker died holding it), a lease to be reclaimed, and a backoff;
    a job may use every attempt. The backlog left after the load adds its
    share on top, and a fixed margin covers restarts and reconnects.
    """
    return adapter.semantics.max_attempts * _attempt_s(adapter, scenario) + 15.0


def _attempt_s(adapter: Adapter, scenario: Scenario) -> float:
    """The longest one attempt of a job may take, lease expiry and backoff included."""
    s = adapter.semantics
    run_s = max(s.job_timeout_s or 0.0, scenario.slowest_s(), 0.5)
    return run_s + s.lease_s + s.backoff_max_s + 1.0


class _Client:
    """One enqueuing client: records invoke, then ok, fail or info."""

    def __init__(self, name: str, dsn: str, adapter: Adapter, history: History):
        self.name = name
        self.dsn = dsn
        self.adapter = adapter
        self.history = history
        self._conn: psycopg.Connection | None = None

    def __repr__(self) -> str:
        return f"<Client {self.name}>"

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def enqueue(self, key: str, behaviour: str) -> str:
        """Enqueue one job; the op type recorded (ok, fail or info)."""
        self.history.append({"f": "enqueue", "type": "invoke", "process": self.name,
                             "key": key, "behaviour": behaviour})
        outcome, error = self._enqueue(key, behaviour)
        op = {"f": "enqueue", "type": outcome, "process": self.name, "key": key}
        if error:
            op["error"] = error
        self.history.append(op)
        return outcome

    def _enqueue(self, key: str, behaviour: str) -> tuple[str, str | None]:
        committing = False
        with _Deadline(self, ENQUEUE_DEADLINE_S):
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(
                        self.dsn, connect_timeout=5, application_name=self.name
                    )
                self.adapter.enqueue(
                    self._conn, key, {"key": key, "behaviour": behaviour}
                )
                committing = True
                self._conn.commit()
                return "ok", None
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                self.close()
                # Once COMMIT is sent, a lost connection says nothing of the
                # outcome: it may have committed. Before that, it did not.
                return ("info" if committing else "fail"), error

    def abort(self) -> None:
        """Cut a connection that stopped answering, from another thread."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        with contextlib.suppress(OSError):
            # shutdown acts on the socket behind every descriptor of it, so
            # the call blocked on the original descriptor sees the end
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            with contextlib.closing(sock):
                sock.shutdown(socket.SHUT_RDWR)


class _Deadline:
    """Abort a client's connection when one call takes longer than timeout_s.

    A black-holed or frozen server never answers, and no libpq setting bounds
    a wait on a peer that keeps the TCP connection alive (the proxy does).
    """

    def __init__(self, client: _Client, timeout_s: float) -> None:
        self._timer = threading.Timer(timeout_s, client.abort)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class Run:
    """The parts of one run, wired together; `execute` plays it."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        adapter: Adapter | str,
        server: Any,
        seed: int,
        reports_dir: Path,
        workers: int | None = None,
        duration_s: float | None = None,
        progress: Progress | None = None,
        network: Any | None = None,
    ) -> None:
        self.scenario = scenario
        self.adapter = get_adapter(adapter) if isinstance(adapter, str) else adapter
        if scenario.transactional:
            transactional = self.adapter.with_transactional_completion()
            if transactional is None:
                raise UsageError(
                    f"scenario {scenario.name} needs transactional completion, "
                    f"which adapter {self.adapter.name} does not offer"
                )
            self.adapter = transactional
        self.server = server
        self.seed = seed
        self.workers = workers or scenario.workers
        self.duration_s = duration_s if duration_s is not None else scenario.duration_s
        self.progress = progress or (lambda phase, info: None)
        self.network = network
        self.report_dir = report.new_run_dir(
            reports_dir, scenario.name, self.adapter.name, seed
        )
        self.history = History(self.report_dir / "history.jsonl")
        self.ledger = Ledger(self.report_dir / "ledger")
        self.timings: dict[str, float] = {}
        self.windows = schedule_for(scenario, seed)
        if duration_s is not None and not scenario.random_faults:
            self.windows = [w for w in self.windows if w.at_s < self.duration_s]
        self._keys: list[str] = []
        self.final: dict[str, Any] | None = None
        self.drained = False
        self.database: Any = None
        self.pool: WorkerPool | None = None
        self.nemesis: Nemesis | None = None
        self.client: _Client | None = None
        self._started = time.monotonic()

    def _phase(self, name: str, **info: Any) -> None:
        self.history.append({"f": "phase", "type": "info", "process": "runner",
                             "phase": name})
        self.progress(name, info)

    def execute(self) -> RunResult:
        """Play the scenario: open, load under the fault schedule, finish."""
        try:
            self.open()
            self._phase("load", jobs=self.scenario.jobs, faults=len(self.windows))
            t = time.monotonic()
            self._load_with_faults()
            self.timings["load_s"] = time.monotonic() - t
        except BaseException:
            self.finish(complete=False)
            raise
        return self.finish()

    # The steps of a run, also driven one by one by the stateful test.

    def open(self) -> None:
        """Create the database, install the queue, start proxies and workers."""
        self._started = time.monotonic()
        self.progress("setup", {"report_dir": str(self.report_dir)})
        reason = self.adapter.unavailable()
        if reason:
            raise UsageError(f"adapter {self.adapter.name} is unavailable: {reason}")
        self.database = self.server.create_database()
        self.adapter.install(self.database.dsn)
        worker_dsn = client_dsn = self.database.dsn
        proxies = None
        if self.network is not None:
            proxies = self.network.proxies_for(self.database)
            worker_dsn = proxies["workers"].dsn(self.database)
            client_dsn = proxies["clients"].dsn(self.database)
        self.pool = WorkerPool(
            lambda name: self.adapter.worker_command(worker_dsn, name),
            size=self.workers,
            history=self.history,
            env={"QUEUE_CHAOS_LEDGER": str(self.ledger.directory)},
            log_dir=self.report_dir / "workers",
        )
        self.nemesis = Nemesis(
            history=self.history, pool=self.pool, server=self.server,
            database=self.database.name,
            rng=random.Random(f"{self.seed}:nemesis"), proxies=proxies,
        )
        self.client = _Client("client-0", client_dsn, self.adapter, self.history)
        self.pool.start()
        self.timings["setup_s"] = time.monotonic() - self._started

    def enqueue(self, key: str, behaviour: str) -> str:
        """Enqueue one job through the client; the op type recorded."""
        self._keys.append(key)
        return self.client.enqueue(key, behaviour)

    def wait(self, seconds: float) -> None:
        """Let seconds pass while the pool is supervised, as it is under load."""
        until = time.monotonic() + seconds
        while True:
            self.pool.supervise()
            left_s = until - time.monotonic()
            if left_s <= 0:
                return
            time.sleep(min(0.05, left_s))

    def merge_ledger(self) -> int:
        """Add what job bodies have written to the ledger so far to the history.

        Returns how many records were new; records already added are skipped,
        so it may be called after every step of a run.
        """
        return self.history.add_ledger(self.ledger.read())

    def finish(
        self,
        *,
        complete: bool = True,
        drain_deadline_s: float | None = None,
        drain_quiet_s: float | None = None,
        report_valid: bool = True,
    ) -> RunResult:
        """Heal, drain, stop workers, snapshot, check and write the report.

        With complete=False (an interrupted run) it only cleans up and writes
        what it had, marked incomplete, with an unknown verdict. The drain
        gives up after drain_deadline_s (default: `drain_deadline_s()` of the
        adapter and scenario) or, with drain_quiet_s, once the queue has made
        no progress for that long. With report_valid=False a valid run writes
        no report, only its history (a state machine plays many such runs).
        """
        verdict: Verdict | None = None
        try:
            if complete:
                verdict = self._conclude(drain_deadline_s, drain_quiet_s)
        except BaseException:
            complete = False
            raise
        finally:
            if not complete:
                self._abandon()
                verdict = Verdict("unknown", reason="the run did not finish")
            self.timings["total_s"] = time.monotonic() - self._started
            result = RunResult(
                verdict, self.report_dir, self.scenario.name, self.adapter.name,
                self.seed, complete, self.timings,
            )
            if report_valid or verdict.valid is not True:
                report.write(result, self)
            else:
                self.history.close()
            self._release(drop=complete)
        self.progress("done", {"valid": verdict.valid})
        return result

    def _conclude(
        self, drain_deadline_s: float | None, drain_quiet_s: float | None
    ) -> Verdict:
        self._phase("heal")
        self.nemesis.heal_all()
        self.pool.supervise()

        self._phase("drain")
        t = time.monotonic()
        self.drained = self._drain(
            self.database.dsn, self.pool, deadline_s=drain_deadline_s,
            quiet_s=drain_quiet_s,
        )
        self.timings["drain_s"] = time.monotonic() - t

        self._phase("stop")
        forced = self.pool.stop()
        if forced:
            self.history.append({"f": "phase", "type": "info", "process": "runner",
                                 "phase": "forced-stop",
                                 "workers": [w.name for w in forced]})

        self._phase("snapshot")
        self.final = self.adapter.snapshot(self.database.dsn, self._keys)
        self.history.add_ledger(self.ledger.read())

        # The drain ran to its end, all jobs terminal or the deadline passed,
        # with the harness healthy: what is still not terminal now is stuck.
        self._phase("check")
        return check(
            self.history.ops(), self.final, self.adapter.semantics, drained=True,
        )

    def _abandon(self) -> None:
        """Heal and stop what an interrupted run started; keep what it recorded."""
        with contextlib.suppress(Exception):
            if self.nemesis is not None:
                self.nemesis.heal_all()
        with contextlib.suppress(Exception):
            if self.pool is not None:
                self.pool.stop(grace_s=2)
        with contextlib.suppress(Exception):
            self.history.add_ledger(self.ledger.read())

    def _release(self, *, drop: bool) -> None:
        if self.client is not None:
            self.client.close()
        if self.database is None:
            return
        if self.network is not None:
            with contextlib.suppress(Exception):
                self.network.release(self.database)
        if drop:
            with contextlib.suppress(Exception):
                self.server.drop_database(self.database.name)

    def _load_with_faults(self) -> None:
        stop = threading.Event()
        t0 = time.monotonic()
        faults = threading.Thread(
            target=self.nemesis.run, args=(self.windows, stop, t0), name="nemesis",
            daemon=True,
        )
        faults.start()
        scenario = self.scenario
        interval_s = self.duration_s / max(scenario.jobs, 1)
        try:
            for index in range(scenario.jobs):
                due = t0 + index * interval_s
                while time.monotonic() < due:
                    self.pool.supervise()
                    time.sleep(min(0.05, max(0.0, due - time.monotonic())))
                key = f"j{index:05d}"
                self.enqueue(key, scenario.behaviour_of(self.seed, index))
                self.progress("enqueued", {"key": key, "index": index + 1})
            # the schedule may run past the last enqueue
            while faults.is_alive() and time.monotonic() < t0 + self.duration_s:
                self.pool.supervise()
                faults.join(0.05)
        finally:
            stop.set()
            faults.join()

    def _drain(
        self,
        dsn: str,
        pool: WorkerPool,
        *,
        deadline_s: float | None = None,
        quiet_s: float | None = None,
    ) -> bool:
        """Wait until every job is terminal; False when the deadline passes.

        With quiet_s, also False once no waiting job changed its state or
        attempts and no execution was recorded for quiet_s.
        """
        if deadline_s is None:
            deadline_s = drain_deadline_s(self.adapter, self.scenario)
        deadline = time.monotonic() + deadline_s
        last_seen: object = None
        progressed = time.monotonic()
        while True:
            pool.supervise()
            try:
                states = self.adapter.snapshot(dsn, self._keys)
                pending = [k for k, s in states.items() if s.state not in TERMINAL]
                self.progress("draining", {"pending": len(pending)})
                if not pending:
                    return True
                seen = [(k, states[k].state, states[k].attempts) for k in pending]
                if self.merge_ledger() or seen != last_seen:
                    last_seen, progressed = seen, time.monotonic()
            except psycopg.Error as exc:
                log.warning("snapshot failed during drain", extra={"error": str(exc)})
            now = time.monotonic()
            # A loaded machine slows a correct queue down: past the deadline,
            # the drain goes on while jobs still move, up to twice as long. A
            # stuck job does not move, so this costs a stuck run nothing.
            moving = now - progressed < _attempt_s(self.adapter, self.scenario)
            if now > deadline and not (moving and now < deadline + deadline_s):
                return False
            if quiet_s is not None and now - progressed > quiet_s:
                self.history.append({"f": "phase", "type": "info",
                                     "process": "runner", "phase": "stalled",
                                     "quiet_s": quiet_s})
                return False
            time.sleep(SNAPSHOT_EVERY_S)


def run_scenario(
    scenario: Scenario | str,
    *,
    adapter: Adapter | str = "refqueue",
    server: Any,
    seed: int | None = None,
    reports_dir: Path | str = "reports",
    workers: int | None = None,
    duration_s: float | None = None,
    progress: Progress | None = None,
    network: Any | None = None,
) -> RunResult:
    """Run one scenario against one adapter and return its result."""
    from harness.scenarios import get_scenario

    if isinstance(scenario, str):
        scenario = get_scenario(scenario)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    if scenario.needs_server and not getattr(server, "owned", False):
        raise UsageError(
            f"scenario {scenario.name} faults the server, which needs an "
            "ephemeral cluster; run it without --pg-dsn"
        )
    run = Run(
        scenario, adapter=adapter, server=server, seed=seed,
        reports_dir=Path(reports_dir), workers=workers, duration_s=duration_s,
        progress=progress, network=network,
    )
    return run.execute()


__all__ = ["Run", "RunResult", "behaviour_for", "drain_deadline_s", "run_scenario"]
