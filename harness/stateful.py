"""The Hypothesis state machine that drives a queue through faults, step by step."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
import psycopg
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Flaky, FlakyStrategyDefinition, InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from harness.adapters import Adapter, get_adapter
from harness.checker import Verdict, check_safety
from harness.errors import QueueChaosError, UsageError
from harness.jobs import Behaviour, expected_outcome
from harness.nemesis import Window
from harness.runner import Run, RunResult
from harness.scenarios import Scenario

log = logging.getLogger("queue_chaos.stateful")

__all__ = [
    "BEHAVIOURS",
    "FAULT_FAMILIES",
    "PROFILES",
    "PROFILE_ENV",
    "FailureNotReproduced",
    "QueueMachine",
    "QueueViolation",
    "RunUndecided",
    "machine",
    "profile",
    "profile_name",
    "run_machine",
]

# What one enqueue step may ask of its jobs, simplest first: the shrinker moves
# towards the front. Hangs appear only where the queue has a job timeout.
BEHAVIOURS = (
    "ok",
    "slow:2",
    "fail_first:1",
    "crash_first:1",
    "hang_first:1",
    "fail_always",
    "crash_always",
)
BATCH_JOBS = (1, 3)
# Apart from the moments a job of BEHAVIOURS changes state after its start
# (2 s: slow:2 ends; 2 to 2.5 s: a lease of a killed worker is taken back;
# 3 s: a hang times out), so that a replay meets the same states.
PAUSES_S = (0.4, 1.5, 4.0)
PROXY_SIDES = ("workers", "clients")
FAULT_FAMILIES = ("workers", "server", "network")

# Added to a lease and a backoff: how long a step waits for the jobs to come
# to rest (a loaded machine may take seconds to start a job's process).
SETTLE_S = 1.0
# How long a step waits for the workers to be connected after it.
READY_S = 10.0
# How much longer than a lease a fault that cuts workers off lasts.
OUTLAST_MARGIN_S = 0.5
# Added to a lease, an execution and a backoff to make the longest time a
# correct queue may go without visible progress while it drains.
QUIET_MARGIN_S = 2.0

_CONNECTED_SQL = """\
SELECT count(*) FROM pg_stat_activity
WHERE datname = %(database)s AND backend_type = 'client backend'
  AND application_name <> %(client)s AND pid <> pg_backend_pid()"""

PROFILE_ENV = "QUEUE_CHAOS_HYPOTHESIS_PROFILE"
# Each profile's seconds of shrinking after the first failure, programs played
# by the machine's own step cutting included (None: no limit but Hypothesis's
# own five minutes between plays). A program plays in seconds to a minute.
PROFILES: dict[str, float | None] = {"ci": 60.0, "deep": 900.0}

# Health checks that do not fit a machine of real processes: too_slow times
# the drawing of steps. The draws are cheap (rules only record; programs play
# in teardown), but this process shares two cores with Postgres, the proxy,
# the workers and other test sessions, and a draw descheduled for a second
# would fail the run for the machine's load, not for a strategy.
_SUPPRESSED = (HealthCheck.too_slow,)

# No explain phase: it reports which lines of the harness ran, not of the queue.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile(
    "ci",
    max_examples=8,
    stateful_step_count=5,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=_SUPPRESSED,
    phases=_PHASES,
)
settings.register_profile(
    "deep",
    max_examples=100,
    stateful_step_count=12,
    deadline=None,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    report_multiple_bugs=False,
    suppress_health_check=_SUPPRESSED,
    phases=_PHASES,
)

SCENARIO = Scenario(
    name="stateful",
    case="F1-F6",
    description="a program of steps drawn by Hypothesis: batches of jobs, "
    "worker, server and network faults, time passing",
    mix={behaviour: 1.0 for behaviour in BEHAVIOURS},
    jobs=0,
    duration_s=0.0,
)


def profile_name(name: str | None = None) -> str:
    """The state machine profile in force, `ci` unless another is chosen.

    The choice, in order: `name`; `$QUEUE_CHAOS_HYPOTHESIS_PROFILE`; the profile
    loaded with `--hypothesis-profile` when it is one of ours (`ci`, `deep`).
    """
    chosen = name or os.environ.get(PROFILE_ENV)
    if not chosen:
        current = settings.get_current_profile_name()
        chosen = current if current in PROFILES else "ci"
    if chosen not in PROFILES:
        raise UsageError(
            f"state machine profile {chosen!r} is unknown; "
            f"choose one of {', '.join(PROFILES)}"
        )
    return chosen


def profile(name: str | None = None) -> settings:
    """The Hypothesis settings of the profile `profile_name(name)`."""
    return settings.get_profile(profile_name(name))


class QueueViolation(AssertionError):
    """The queue broke a property: safety as the history grew, or liveness after.

    `kinds` are the violated properties, `steps` the program that broke it
    (one `state.rule(...)` line per step), `report_dir` the failing run's report.
    """

    def __init__(
        self,
        message: str,
        *,
        kinds: list[str],
        verdict: Verdict,
        steps: list[str],
        report_dir: Path,
        seed: int,
    ) -> None:
        super().__init__(message)
        self.kinds = kinds
        self.verdict = verdict
        self.steps = steps
        self.report_dir = report_dir
        self.seed = seed


class RunUndecided(AssertionError):
    """The harness could not tell whether the queue is correct; never a pass."""


class FailureNotReproduced(Flaky):
    """A failure the harness saw did not happen again when its program was replayed."""


@dataclass
class _Setup:
    adapter: Adapter
    server: Any
    network: Any | None
    reports_dir: Path
    workers: int
    seed: int
    keep_reports: bool
    shrink_budget_s: float | None = None
    # the failure of each program played, None for a pass
    outcomes: dict[tuple, _Failure | None] = field(default_factory=dict)
    # report folders of the programs that failed, newest last
    failed: list[Path] = field(default_factory=list)
    first_failure_s: float | None = None
    shrink_cut: bool = False
    shrink_done: bool = False
    # the length of the shortest failing program Hypothesis has been given
    shortest_failure: float = float("inf")

    def budget_spent(self) -> bool:
        """Whether shrinking has used its budget since the first failure."""
        return (
            self.shrink_budget_s is not None
            and self.first_failure_s is not None
            and time.monotonic() - self.first_failure_s > self.shrink_budget_s
        )

    def reset(self, shrink_budget_s: float | None) -> None:
        self.shrink_budget_s = shrink_budget_s
        self.outcomes.clear()
        self.failed.clear()
        self.first_failure_s = None
        self.shrink_cut = False
        self.shrink_done = False
        self.shortest_failure = float("inf")


@dataclass(frozen=True)
class _Failure:
    """How a program failed, to raise the same failure again without playing it."""

    kind: type[AssertionError]
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def error(self) -> AssertionError:
        return self.kind(self.message, **self.details)


class _Aim(random.Random):
    """The nemesis's random source, aimed at the workers named in `prefer`.

    A worker fault then hits a worker that is running a job, whichever worker
    won the claim, so that a replayed program does to the queue what the
    original did. Every other draw is the seeded one.
    """

    prefer: tuple[str, ...] = ()

    def choice(self, seq: Any) -> Any:
        for name in self.prefer:
            for item in seq:
                if getattr(item, "name", None) == name:
                    return item
        return super().choice(seq)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_final_replay() -> bool:
    """Whether Hypothesis replays the failure it will report (or is not running)."""
    try:
        return current_build_context().is_final
    except InvalidArgument:
        return True


def _shown(name: str, args: dict[str, Any]) -> str:
    return f"state.{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


class _Player:
    """Plays a program of steps on one run of the queue under test, and judges it.

    Each step is a runner step; after each one the pool is supervised (a
    killed worker is replaced), the workers are given time to connect, and
    safety is checked on the history as it has grown. At the end every fault
    is healed, the queue drained, and liveness checked.
    """

    def __init__(self, setup: _Setup, steps: list[tuple[str, dict[str, Any]]]):
        self.setup = setup
        self.steps = steps
        self.run: Run | None = None
        self.paused: list[Any] = []
        self.frozen: Any = None
        self.cut: Any = None
        self.enqueued: list[str] = []
        self.acknowledged: list[str] = []
        self.restless: set[str] = set()
        self.keys = 0

    def play(self) -> _Failure | None:
        """Play every step, then heal, drain and check; the failure, if any."""
        self._open()
        run = self.run
        try:
            for played, (name, args) in enumerate(self.steps, 1):
                getattr(self, name)(**args)
                run.pool.supervise()
                self._wait_workers_connected()
                self._settle()
                failure = self.history_is_safe(played)
                if failure is not None:
                    # judge the record as it is, without waiting on a drain
                    self._keep(run.finish(drain_deadline_s=0.0), passed=False)
                    return failure
            self._heal_the_rest()
        except BaseException:
            self._keep(run.finish(complete=False), passed=False)
            raise
        result = run.finish(
            drain_quiet_s=self._quiet_s(), report_valid=self.setup.keep_reports
        )
        verdict = result.verdict
        self._keep(result, passed=verdict.valid is True)
        if verdict.valid is True:
            return None
        if verdict.valid is False:
            return self._violation(verdict, "after the heal and drain", result)
        return _Failure(RunUndecided, (
            "the harness could not tell whether the queue is correct\n"
            f"{result.summary()}\n{self._program()}"
        ))

    def history_is_safe(self, played: int) -> _Failure | None:
        """The invariant, checked after every step on the history so far.

        Nothing unexpected, no concurrent execution under a valid lease, no
        retry past the limit; the ledger is merged in first.
        """
        self.run.merge_ledger()
        verdict = check_safety(self.run.history.ops(), self.run.adapter.semantics)
        if verdict.valid is True:
            return None
        when = f"as the history grew, after step {played} of {len(self.steps)}"
        if verdict.valid is False:
            return self._violation(verdict, when)
        return _Failure(RunUndecided, (
            f"the safety check could not decide {when}: {verdict.reason}\n"
            f"report: {self.run.report_dir / 'report.md'}\n{self._program()}"
        ))

    # Steps --------------------------------------------------------------

    def enqueue(self, behaviour: str, jobs: int) -> None:
        """Enqueue a batch of jobs of one behaviour through the client."""
        keys = [f"j{self.keys + index:05d}" for index in range(jobs)]
        self.keys += jobs
        self.enqueued.append(behaviour)
        self.acknowledged += [
            key for key in keys if self.run.enqueue(key, behaviour) == "ok"
        ]

    def let_time_pass(self, seconds: float) -> None:
        self.run.wait(seconds)

    def kill_worker(self) -> None:
        """SIGKILL a worker (one running a job if any); the pool starts another."""
        self._heal(self._start("kill-worker"))

    def pause_worker(self) -> None:
        """SIGSTOP a worker (one running a job if any) until resume_worker."""
        self.paused.append(self._start("pause-worker"))

    def resume_worker(self) -> None:
        """SIGCONT the worker paused first, once its pause has outlasted a lease."""
        self._heal(self.paused.pop(0), outlast_lease=True)

    def server_crash(self) -> None:
        """SIGKILL every server process; start it again once a lease has passed."""
        self._heal(self._start("crash-db"), outlast_lease=True)

    def server_restart(self) -> None:
        """Stop the server (fast shutdown); start it again once a lease has passed."""
        self._heal(self._start("restart-db"), outlast_lease=True)

    def server_freeze(self) -> None:
        """SIGSTOP every server process until server_thaw."""
        self.frozen = self._start("freeze-db")

    def server_thaw(self) -> None:
        """SIGCONT the server, once the freeze has outlasted a lease."""
        self._heal(self.frozen, outlast_lease=True)
        self.frozen = None

    def terminate_backends(self) -> None:
        """Terminate every connection to the run's database."""
        self._heal(self._start("terminate-backends"))

    def partition(self, side: str) -> None:
        """Cut one side's proxy (workers' or clients') off until heal_partition."""
        self.cut = self._start("partition", side=side)

    def heal_partition(self) -> None:
        """Reconnect the proxy, once the partition has outlasted a lease."""
        self._heal(self.cut, outlast_lease=True)
        self.cut = None

    # Helpers ------------------------------------------------------------

    def _heal_the_rest(self) -> None:
        """Heal the faults the program left active, each once it outlasted a lease.

        The run's finish heals whatever is left at once; healed here, a fault
        left by the last step lasts as long as one healed by a step.
        """
        while self.paused:
            self.resume_worker()
        if self.frozen is not None:
            self.server_thaw()
        if self.cut is not None:
            self.heal_partition()

    def _open(self) -> None:
        """Start the run: a fresh database, proxies and workers, all connected."""
        setup = self.setup
        if setup.server.owned:
            # a previous program may have ended with the server frozen or down
            setup.server.thaw()
            setup.server.start()
        self.run = Run(
            SCENARIO, adapter=setup.adapter, server=setup.server, seed=setup.seed,
            reports_dir=setup.reports_dir, workers=setup.workers,
            network=setup.network,
        )
        try:
            self.run.open()
        except BaseException:
            self.run.finish(complete=False)
            raise
        self.aim = _Aim(f"{setup.seed}:nemesis")
        self.run.nemesis.rng = self.aim
        self.opened_s = time.monotonic()
        self._wait_workers_connected()

    def _workers_cut_off(self) -> bool:
        return self.cut is not None and self.cut.window.side == "workers"

    def _now_s(self) -> float:
        return round(time.monotonic() - self.opened_s, 3)

    def _start(self, fault: str, side: str = "workers") -> Any:
        if fault in ("kill-worker", "pause-worker"):
            self._aim_at_busy_workers()
        return self.run.nemesis.start(Window(self._now_s(), fault, 0.0, side))

    def _heal(self, active: Any, *, outlast_lease: bool = False) -> None:
        """Heal a fault; with outlast_lease, not before it has lasted a lease.

        A fault that cuts workers off for about a lease races the lease: on
        one run every lease held expires, on the replay none does. A fault
        healed only after a lease and a margin always meets expired leases,
        on a loaded machine too, so a shrunk program replays the same way.
        """
        if outlast_lease:
            lease_s = self.run.adapter.semantics.lease_s
            self.run.wait(
                active.window.at_s + lease_s + OUTLAST_MARGIN_S - self._now_s()
            )
        self.run.nemesis.heal(active)
        window = active.window
        duration_s = round(max(0.0, self._now_s() - window.at_s), 3)
        self.run.windows.append(dataclasses.replace(window, duration_s=duration_s))

    def _aim_at_busy_workers(self) -> None:
        """Aim the next worker fault at workers running a job, newest start first."""
        running = [r for r, alive in self._latest_executions().values() if alive]
        running.sort(key=lambda record: record["t"], reverse=True)
        self.aim.prefer = tuple(dict.fromkeys(r["worker"] for r in running))

    def _latest_executions(self) -> dict[str, tuple[dict[str, Any], bool]]:
        """Each job's latest execution: its start record, and whether it runs.

        It runs while it has no end and its process is alive: a crashed or
        killed execution never writes its end.
        """
        latest: dict[str, dict[str, Any]] = {}
        ended = set()
        for record in self.run.ledger.read():
            if record["event"] != "start":
                ended.add((record["key"], record["n"]))
            elif record["n"] >= latest.get(record["key"], {"n": 0})["n"]:
                latest[record["key"]] = record
        return {
            key: (r, (key, r["n"]) not in ended and _alive(r["pid"]))
            for key, r in latest.items()
        }

    def _wait_workers_connected(self) -> None:
        """Wait until the workers that can reach the database are connected to it.

        So that a worker started in place of a killed one, or a worker
        reconnecting after a server fault, is back before the next step, as
        it was when the program was found. Skipped while no worker can
        connect (server frozen, workers cut off); gives up after READY_S.
        Counts connections to the run's database other than the enqueuing
        client's: one at least per worker.
        """
        if self.frozen is not None or self._workers_cut_off():
            return
        expected = len(self.run.pool.active())
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(
                    self.setup.server.dsn(), autocommit=True, connect_timeout=2
                ) as conn:
                    connected = conn.execute(_CONNECTED_SQL, {
                        "database": self.run.database.name,
                        "client": self.run.client.name,
                    }).fetchone()[0]
                if connected >= expected:
                    return
            except psycopg.Error:
                pass
            self.run.wait(0.05)

    def _settle(self) -> None:
        """Wait until every job is at rest: terminal, or running an execution.

        A job between two executions (claimed, failing, backing off, or held
        by a worker that died) is in motion; a fault in the next step would
        meet it at a moment that differs from run to run. So every step
        ends once each acknowledged job is done or dead, or the queue holds
        it as running while its latest execution runs. Skipped while no
        worker can run jobs; gives up after a lease, a backoff and SETTLE_S,
        as a queue that lost a job never lets it rest, and waits no more for
        a job it gave up on.
        """
        if (
            not self.acknowledged
            or self.frozen is not None
            or self._workers_cut_off()
            or not self.run.pool.active()
        ):
            return
        semantics = self.run.adapter.semantics
        timeout_s = semantics.lease_s + semantics.backoff_max_s + SETTLE_S
        deadline = time.monotonic() + timeout_s
        keys = [key for key in self.acknowledged if key not in self.restless]
        at_rest: list[str] = []
        while keys and time.monotonic() < deadline:
            latest = self._latest_executions()
            try:
                states = self.run.adapter.snapshot(self.run.database.dsn, keys)
            except (psycopg.Error, QueueChaosError):
                states = {}
            at_rest = [
                key for key in keys
                if key in states
                and (
                    states[key].state in ("done", "dead")
                    or states[key].state == "running"
                    and key in latest
                    and latest[key][1]
                )
            ]
            if len(at_rest) == len(keys):
                return
            self.run.wait(0.05)
        # not waited for again: the check at the end will say what became of it
        self.restless.update(set(keys) - set(at_rest))

    def _quiet_s(self) -> float:
        """The longest a correct queue may go without progress while it drains.

        A lease (a job held by a killed worker), the longest execution of the
        jobs enqueued (a hang lasts until the job timeout), a backoff, and a
        margin for workers that restart or reconnect.
        """
        semantics = self.run.adapter.semantics
        run_s = 0.0
        for behaviour in set(self.enqueued):
            parsed = Behaviour.parse(behaviour)
            if parsed.kind == "hang":
                run_s = max(run_s, semantics.job_timeout_s or 0.0)
            run_s = max(run_s, parsed.seconds)
        return semantics.lease_s + run_s + semantics.backoff_max_s + QUIET_MARGIN_S

    def _program(self) -> str:
        return _program_text(self.setup, self.steps)

    def _violation(
        self, verdict: Verdict, when: str, result: RunResult | None = None
    ) -> _Failure:
        run = self.run
        if result is None:
            result = RunResult(
                verdict, run.report_dir, SCENARIO.name, run.adapter.name,
                self.setup.seed, complete=False,
            )
        kinds = sorted({anomaly.kind for anomaly in verdict.violations})
        message = (
            f"{run.adapter.name} broke {', '.join(kinds)} {when}\n"
            f"{result.summary()}\n{self._program()}"
        )
        return _Failure(QueueViolation, message, {
            "kinds": kinds, "verdict": verdict,
            "steps": [_shown(name, args) for name, args in self.steps],
            "report_dir": run.report_dir, "seed": self.setup.seed,
        })

    def _keep(self, result: RunResult, *, passed: bool) -> None:
        """Keep the report of a failed run with its program; drop a passed one."""
        if passed and not self.setup.keep_reports:
            shutil.rmtree(result.report_dir, ignore_errors=True)
            return
        (result.report_dir / "program.txt").write_text(self._program() + "\n")
        if not passed:
            self.setup.failed.append(result.report_dir)
            if self.setup.first_failure_s is None:
                self.setup.first_failure_s = time.monotonic()


def _program_text(setup: _Setup, steps: list[tuple[str, dict[str, Any]]]) -> str:
    """The program as lines to paste into a test, after the class is made."""
    network = ", network=network" if any(n == "partition" for n, _ in steps) else ""
    lines = [
        f"program of {len(steps)} step(s), seed {setup.seed}:",
        f"    QueueMachine = harness.stateful.machine("
        f"{setup.adapter.name!r}, server{network})",
        "    state = QueueMachine()",
        *(f"    {_shown(name, args)}" for name, args in steps),
        "    state.teardown()",
    ]
    if setup.shrink_cut:
        lines.append(
            f"(shrinking stopped after its budget of {setup.shrink_budget_s:.0f} s: "
            "a shorter program may exist)"
        )
    return "\n".join(lines)


# Preconditions read only the program so far, never the run: a replay of the
# same choices then meets the same rules, whatever the processes did.


def _has_jobs(self: QueueMachine) -> bool:
    # A fault before the first job meets nothing; every program starts loaded.
    return self.jobs > 0


def _server_faults(self: QueueMachine) -> bool:
    return self.jobs > 0 and not self.frozen


def _step(function: Callable[..., None]) -> Callable[..., None]:
    """Record a rule's call as a step of the program, then update the program."""

    @functools.wraps(function)
    def step(self: QueueMachine, **args: Any) -> None:
        self.steps.append((function.__name__, args))
        function(self, **args)

    return step


def _enqueue_rule(behaviours: tuple[str, ...]) -> Callable[..., None]:
    """The enqueue rule, drawing from behaviours (those the queue can end)."""

    @rule(behaviour=st.sampled_from(behaviours), jobs=st.integers(*BATCH_JOBS))
    @precondition(lambda self: not self.frozen)
    @_step
    def enqueue(self: QueueMachine, behaviour: str, jobs: int) -> None:
        """Enqueue a batch of jobs of one behaviour and let the queue take them up."""
        self.jobs += jobs

    return enqueue


class QueueMachine(RuleBasedStateMachine):
    """Programs of runner steps against the queue under test, drawn by Hypothesis.

    Each rule records one step (enqueue a batch, a worker, server or network
    fault, time passing); teardown plays the program on a fresh run (a new
    database, its own proxies and workers) with safety checked after every
    step, then heals, drains and checks liveness, and fails on a violation.
    Create the class with `machine(...)`, which binds it to a queue and a
    server.

    Playing at teardown, not as rules are drawn, lets the machine remember
    each program's outcome: Hypothesis meets the same program many times
    under different choices while it shrinks, and plays each once. At the
    first failure the machine cuts steps itself (`_cut_steps`); after that
    it plays only programs shorter than the shortest failure so far, and
    none once the shrink budget is spent: the others pass unplayed. The
    failure Hypothesis reports is always played again.
    """

    setup: ClassVar[_Setup | None] = None

    def __init__(self) -> None:
        super().__init__()
        setup = type(self).setup
        if setup is None:
            raise UsageError(
                "QueueMachine needs a queue and a server: create the class with "
                "harness.stateful.machine(adapter, server)"
            )
        self.setup = setup
        self.steps: list[tuple[str, dict[str, Any]]] = []
        self.jobs = 0
        self.paused = 0
        self.frozen = False
        self.partitioned = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.setup.adapter.name} {self.steps!r}>"

    # Load ---------------------------------------------------------------

    enqueue = _enqueue_rule(BEHAVIOURS)

    @rule(seconds=st.sampled_from(PAUSES_S))
    @precondition(_has_jobs)
    @_step
    def let_time_pass(self, seconds: float) -> None:
        pass

    # Workers ------------------------------------------------------------

    @rule()
    @precondition(_has_jobs)
    @_step
    def kill_worker(self) -> None:
        pass

    @rule()
    @precondition(lambda self: self.jobs > 0 and self.paused < self.setup.workers)
    @_step
    def pause_worker(self) -> None:
        self.paused += 1

    @rule()
    @precondition(lambda self: self.paused > 0)
    @_step
    def resume_worker(self) -> None:
        self.paused -= 1

    @rule()
    @precondition(lambda self: self.jobs > 0 and not self.frozen)
    @_step
    def terminate_backends(self) -> None:
        pass

    # Playing ------------------------------------------------------------

    def teardown(self) -> None:
        """Play the program (or recall how it went) and fail on any violation."""
        failure = self._judge()
        if failure is not None:
            raise failure.error()

    def _judge(self) -> _Failure | None:
        setup = self.setup
        if not self.steps:
            return None
        final = _is_final_replay()
        if final:
            return self._play(self.steps)
        if _key(self.steps) in setup.outcomes:
            failure = setup.outcomes[_key(self.steps)]
        elif setup.budget_spent() or (
            # after the machine's own cutting, only shorter programs are worth it
            setup.shrink_done and len(self.steps) >= setup.shortest_failure
        ):
            setup.shrink_cut |= setup.budget_spent() and not setup.shrink_done
            return None
        else:
            first = setup.first_failure_s is None
            failure = self._play(self.steps)
            if failure is not None and first:
                self._cut_steps(self.steps, failure)
        if failure is not None:
            setup.shortest_failure = min(setup.shortest_failure, len(self.steps))
        return failure

    def _play(self, steps: list[tuple[str, dict[str, Any]]]) -> _Failure | None:
        started_s = time.monotonic()
        failure = _Player(self.setup, list(steps)).play()
        self.setup.outcomes[_key(steps)] = failure
        log.debug("program played", extra={
            "steps": [_shown(name, args) for name, args in steps],
            "failed": failure is not None,
            "seconds": round(time.monotonic() - started_s, 1),
        })
        return failure

    def _cut_steps(
        self, steps: list[tuple[str, dict[str, Any]]], failure: _Failure
    ) -> None:
        """Play shorter programs that might fail as this one did, within the budget.

        Hypothesis shrinks by trying many variants of a failing program, most
        of which keep its length; played for real, each costs seconds. So at
        the first failure the machine plays, itself, the program without one
        step, for each step, keeping any that still fails, then each batch
        down to one job, until nothing more can go. Hypothesis's shrinker
        then finds their outcomes remembered when it tries them.
        """
        current = list(steps)
        changed = True
        while changed:
            changed = False
            candidates = [
                current[:i] + current[i + 1:] for i in reversed(range(len(current)))
            ]
            candidates += [
                current[:i] + [(name, {**args, "jobs": 1})] + current[i + 1:]
                for i, (name, args) in enumerate(current)
                if args.get("jobs", 1) > 1
            ]
            for candidate in candidates:
                if self.setup.budget_spent():
                    self.setup.shrink_cut = True
                    return
                if not candidate or not self._valid(candidate):
                    continue
                known = self.setup.outcomes.get(_key(candidate), ...)
                outcome = self._play(candidate) if known is ... else known
                if outcome is not None and outcome.kind is failure.kind:
                    current, changed = candidate, True
                    break
        self.setup.shrink_done = True

    def _valid(self, steps: list[tuple[str, dict[str, Any]]]) -> bool:
        """Whether every step's preconditions hold where it stands in steps."""
        rules = {rule.function.__name__: rule for rule in self.setup_state().rules}
        dry = type(self)()
        for name, args in steps:
            rule = rules[name]
            if not all(check(dry) for check in rule.preconditions):
                return False
            rule.function(dry, **args)
        return True


def _key(steps: list[tuple[str, dict[str, Any]]]) -> tuple:
    return tuple((name, tuple(sorted(args.items()))) for name, args in steps)


class _ServerFaults:
    """The rules that fault the server's processes (an ephemeral cluster only)."""

    # Hypothesis orders rules by name and shrinks towards the first: the
    # names put the cheap worker faults before the server's.

    @rule()
    @precondition(_server_faults)
    @_step
    def server_crash(self) -> None:
        pass

    @rule()
    @precondition(_server_faults)
    @_step
    def server_restart(self) -> None:
        pass

    @rule()
    @precondition(_server_faults)
    @_step
    def server_freeze(self) -> None:
        self.frozen = True

    @rule()
    @precondition(lambda self: self.frozen)
    @_step
    def server_thaw(self) -> None:
        self.frozen = False


class _NetworkFaults:
    """The rules that cut a side's proxy off (a run with a network only)."""

    @rule(side=st.sampled_from(PROXY_SIDES))
    @precondition(lambda self: self.jobs > 0 and not self.partitioned)
    @_step
    def partition(self, side: str) -> None:
        self.partitioned = True

    @rule()
    @precondition(lambda self: self.partitioned)
    @_step
    def heal_partition(self) -> None:
        self.partitioned = False


def machine(
    adapter: Adapter | str,
    server: Any,
    *,
    network: Any | None = None,
    reports_dir: Path | str = "reports",
    workers: int = 2,
    seed: int = 0,
    keep_reports: bool = False,
    faults: tuple[str, ...] = FAULT_FAMILIES,
    behaviours: tuple[str, ...] = BEHAVIOURS,
) -> type[QueueMachine]:
    """A `QueueMachine` class bound to a queue (adapter) and a Postgres server.

    `faults` chooses the families of fault rules (`FAULT_FAMILIES`): the
    workers' faults and terminated connections always; the server's when the
    server is an ephemeral cluster; the network's with `network` (a
    `harness.network.Network`). `behaviours` narrows what enqueued jobs
    do (a subset of `BEHAVIOURS`): a hunt for one kind of bug meets it in
    fewer programs. Reports of runs that pass are removed unless
    `keep_reports`; those of failures are kept, with the program in
    `program.txt`.
    """
    unknown = set(faults) - set(FAULT_FAMILIES)
    if unknown or "workers" not in faults:
        raise UsageError(
            f"fault families {faults!r}: choose among {', '.join(FAULT_FAMILIES)}, "
            "workers included"
        )
    unknown = [b for b in behaviours if b not in BEHAVIOURS]
    if unknown or not behaviours:
        raise UsageError(
            f"behaviours {behaviours!r}: choose one or more of {', '.join(BEHAVIOURS)}"
        )
    adapter = get_adapter(adapter) if isinstance(adapter, str) else adapter
    setup = _Setup(
        adapter, server, network, Path(reports_dir), workers, seed, keep_reports,
    )
    # the digest keeps the example database of each queue apart
    digest = f"{adapter.name}:{workers}:{network is not None}".encode()
    namespace: dict[str, Any] = {
        "setup": setup, "_hypothesis_internal_add_digest": digest,
    }
    endable = tuple(
        b for b in behaviours if expected_outcome(b, adapter.semantics) is not None
    )
    if not endable:
        possible = [b for b in BEHAVIOURS if expected_outcome(b, adapter.semantics)]
        raise UsageError(
            f"behaviours {behaviours!r}: {adapter.name} can end none of them; "
            f"choose among {', '.join(possible)}"
        )
    if endable != BEHAVIOURS:
        namespace["enqueue"] = _enqueue_rule(endable)
    # Only the rules this run can play: a rule whose precondition never holds
    # keeps Hypothesis (6.170) from shortening programs while it shrinks.
    bases: tuple[type, ...] = (QueueMachine,)
    if "server" in faults and getattr(server, "owned", False):
        bases = (_ServerFaults, *bases)
    if "network" in faults and network is not None:
        bases = (_NetworkFaults, *bases)
    return type("QueueMachine", bases, namespace)


_PROFILE_BUDGET: Any = object()


def run_machine(
    machine_class: type[QueueMachine],
    *,
    settings: settings | None = None,
    shrink_budget_s: float | None = _PROFILE_BUDGET,
) -> None:
    """Run the state machine as a test.

    `settings` default to `profile()`, `shrink_budget_s` to that profile's
    budget (`PROFILES`; None leaves the limit to Hypothesis). Raises what the
    shrunk program raised (QueueViolation, RunUndecided), or
    FailureNotReproduced when a failure did not happen again on replay.
    """
    setup = machine_class.setup
    if setup is None:
        raise UsageError("run_machine needs a class made by harness.stateful.machine")
    if shrink_budget_s is _PROFILE_BUDGET:
        shrink_budget_s = PROFILES[profile_name()]
    setup.reset(shrink_budget_s)
    try:
        run_state_machine_as_test(machine_class, settings=settings or profile())
    except Flaky as exc:
        if isinstance(exc, FailureNotReproduced):
            raise
        failed = setup.failed
        where = (
            f"the report of the last failing run is {failed[-1] / 'report.md'} "
            f"({len(failed)} failing run(s) kept under {failed[-1].parent})"
            if failed
            else "no failing run left a report"
        )
        if isinstance(exc, FlakyStrategyDefinition):
            what = "the steps Hypothesis could take changed on replay"
        else:
            what = "a failure did not happen again when its program was replayed"
        raise FailureNotReproduced(
            f"the harness saw a non-reproducible failure: {what}; {where}"
        ) from exc
