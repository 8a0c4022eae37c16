"""The scenario catalogue: one or more scenarios per failure case F1 to F6.

A scenario is data: the mix of job behaviours, how many jobs over how long,
how many workers, and the faults (a fixed list of windows, or kinds to draw
a random schedule from). The runner plays it against any adapter; nothing
here names a queue library.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.errors import UsageError
from harness.jobs import Behaviour
from harness.nemesis import NETWORK_FAULTS, SERVER_FAULTS, Window


@dataclass(frozen=True)
class Scenario:
    """One scenario of the catalogue."""

    name: str
    case: str
    description: str
    mix: dict[str, float]
    jobs: int
    duration_s: float
    workers: int = 2
    faults: tuple[Window, ...] = ()
    random_faults: tuple[str, ...] = ()
    transactional: bool = False
    tags: frozenset[str] = field(default_factory=frozenset)
    #: Behaviours of the load's last jobs, in order, in place of draws from
    #: the mix: what must happen after the last enqueue.
    last: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for behaviour in (*self.mix, *self.last):
            Behaviour.parse(behaviour)

    def behaviour_of(self, seed: int, index: int) -> str:
        """The behaviour of job `index` of the load under `seed`."""
        from_last = index - (self.jobs - len(self.last))
        if from_last >= 0:
            return self.last[from_last]
        return behaviour_for(seed, index, self.mix)

    def fault_kinds(self) -> set[str]:
        return {w.fault for w in self.faults} | set(self.random_faults)

    @property
    def needs_server(self) -> bool:
        """True when a fault acts on the server's processes."""
        return bool(self.fault_kinds() & set(SERVER_FAULTS))

    @property
    def needs_network(self) -> bool:
        """True when a fault acts through the fault proxy."""
        return bool(self.fault_kinds() & set(NETWORK_FAULTS))

    def slowest_s(self) -> float:
        """The longest a behaviour of the mix runs when it neither hangs nor fails."""
        return max((Behaviour.parse(b).seconds or 0.0 for b in self.mix), default=0.0)


def behaviour_for(seed: int, index: int, mix: dict[str, float]) -> str:
    """The behaviour of the index-th job of a run: the same for the same seed."""
    rng = random.Random(f"{seed}:{index}")
    names = sorted(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]


def _windows(*specs: tuple) -> tuple[Window, ...]:
    return tuple(Window(*spec) for spec in specs)


CATALOGUE: tuple[Scenario, ...] = (
    Scenario(
        name="f1-transient-failures",
        case="F1",
        description="jobs that fail once or twice are retried with backoff and "
        "end done",
        mix={"ok": 1, "fail_first:1": 2, "fail_first:2": 2},
        jobs=60,
        duration_s=5,
        # retried after the last enqueue, when no notification comes: a queue
        # that claims only when notified never runs them again
        last=("fail_first:2",),
    ),
    Scenario(
        name="f2-poison-jobs",
        case="F2",
        description="jobs that fail every time stop after max attempts and end "
        "dead, kept and visible",
        mix={"fail_always": 2, "ok": 1, "fail_first:2": 1},
        jobs=40,
        duration_s=4,
    ),
    Scenario(
        name="f3-worker-killed",
        case="F3",
        description="workers SIGKILLed mid-job: their jobs are claimed again "
        "after the lease expires, nothing lost",
        mix={"slow:1": 3, "ok": 1, "fail_first:1": 1},
        jobs=40,
        duration_s=9,
        workers=3,
        faults=_windows((1.5, "kill-worker"), (3.5, "kill-worker"),
                        (5.5, "kill-worker"), (7.5, "kill-worker")),
    ),
    Scenario(
        name="f4-crashing-jobs",
        case="F4",
        description="jobs that crash their process (exit, SIGSEGV) use up "
        "attempts; one that always crashes ends dead",
        mix={"crash_first:1": 2, "crash_first:1:segv": 1, "crash_always": 1,
             "crash_always:segv": 1, "ok": 2},
        jobs=40,
        duration_s=5,
    ),
    Scenario(
        name="f5-hung-jobs-and-paused-workers",
        case="F5",
        description="hung jobs are freed by the job timeout; a worker paused "
        "past its lease cannot complete a job it no longer holds",
        # slow:2.5 outlives a lease, not the job timeout: only heartbeats keep
        # a second worker from claiming it while it runs.
        mix={"hang_first:1": 1, "hang_always": 1, "slow:3": 1, "slow:1": 2,
             "slow:2.5": 2, "ok": 2},
        jobs=30,
        duration_s=10,
        workers=3,
        faults=_windows((2.0, "pause-worker", 4.5), (6.0, "pause-worker", 4.0)),
        transactional=True,
    ),
    Scenario(
        name="f5-stalled-worker",
        case="F5",
        description="a stalled worker's jobs finish after others took them "
        "over, while it cannot heartbeat; fencing keeps them from completing "
        "twice",
        mix={"slow:1": 3, "ok": 1},
        jobs=78,
        duration_s=13,
        workers=3,
        # Enough load to keep every worker busy; each stall freezes one for
        # longer than a lease plus a job, so its jobs are claimed and done
        # elsewhere before its own go on.
        faults=_windows((2.5, "stall-worker", 5.0), (8.0, "stall-worker", 5.0)),
        transactional=True,
    ),
    Scenario(
        name="f6-database-faults",
        case="F6",
        description="the database crashes, restarts, freezes and terminates "
        "connections; workers reconnect and no acknowledged job is lost",
        mix={"ok": 3, "slow:0.5": 1, "fail_first:1": 1},
        jobs=72,
        duration_s=13.5,
        # The last crash comes while every worker stands still: only enqueues
        # commit then, so nothing else flushes the WAL, and an enqueue
        # acknowledged before its commit was durable is lost in the crash.
        faults=_windows((2.0, "crash-db", 0.5), (4.5, "terminate-backends"),
                        (6.0, "freeze-db", 1.5), (9.0, "restart-db", 0.5),
                        (10.5, "pause-all-workers", 2.5), (12.0, "crash-db", 0.5)),
    ),
    Scenario(
        name="f6-net-partition-workers",
        case="F6",
        description="the workers are cut off from the database while clients go "
        "on enqueueing; after the heal nothing is lost",
        mix={"ok": 3, "slow:0.5": 1, "fail_first:1": 1},
        jobs=50,
        duration_s=9,
        faults=_windows((2.0, "partition", 3.0, "workers")),
    ),
    Scenario(
        name="f6-net-partition-clients",
        case="F6",
        description="the clients are cut off mid-enqueue: outcomes unknown, "
        "never counted as lost, and recovered when they ran",
        mix={"ok": 3, "slow:0.5": 1},
        jobs=36,
        duration_s=12,
        # Latency holds each answer in the proxy, so a cut often falls after
        # COMMIT reached the server and before its answer reached the client;
        # the gaps let the client reconnect and be mid-enqueue at the next cut.
        faults=_windows((0.0, "latency", 12.0, "clients"),
                        *((1.0 + 1.4 * i, "partition", 0.15, "clients")
                          for i in range(8))),
    ),
    Scenario(
        name="f6-net-latency",
        case="F6",
        description="latency with jitter and a bandwidth limit on every "
        "connection slow the queue down but break nothing",
        mix={"ok": 3, "slow:0.5": 1, "fail_first:1": 1},
        jobs=40,
        duration_s=8,
        faults=_windows((1.0, "latency", 3.0, "both"),
                        (5.0, "bandwidth", 2.0, "both")),
    ),
    Scenario(
        name="f6-net-resets",
        case="F6",
        description="connections reset mid-transaction on both sides; workers "
        "and clients reconnect",
        mix={"ok": 3, "slow:0.5": 1, "fail_first:1": 1},
        jobs=50,
        duration_s=9,
        faults=_windows((1.5, "reset-peer", 1.0, "workers"),
                        (4.0, "reset-peer", 0.5, "both"),
                        (6.5, "limit-data", 1.0, "workers")),
    ),
    Scenario(
        name="f6-net-blackhole",
        case="F6",
        description="the workers' traffic vanishes for longer than a lease while "
        "their transactions hold row locks; after the heal nothing is stuck",
        mix={"ok": 2, "slow:1": 2},
        jobs=30,
        duration_s=10,
        faults=_windows((2.0, "blackhole", 4.0, "workers")),
    ),
    Scenario(
        name="f6-clock-skew",
        case="F6",
        description="workers whose wall clock runs five minutes fast join and "
        "die; leases are timed by the database, so their jobs come back",
        mix={"slow:0.3": 4, "ok": 1, "fail_first:1": 1},
        jobs=60,
        duration_s=10,
        # Each skewed worker dies just after it starts a job, so it holds one
        # that no heartbeat has given a lease timed by the database yet.
        faults=_windows((0.5, "skew-clock", 1.5), (3.0, "skew-clock", 1.5),
                        (5.5, "skew-clock", 1.5)),
    ),
    Scenario(
        name="mixed-chaos",
        case="F1-F6",
        description="a random schedule of worker and server faults over a mix of "
        "every behaviour",
        mix={"ok": 4, "slow:1": 2, "fail_first:1": 2, "fail_always": 1,
             "crash_first:1": 1, "hang_first:1": 1},
        jobs=60,
        duration_s=14,
        workers=3,
        random_faults=("kill-worker", "pause-worker", "crash-db", "freeze-db",
                       "terminate-backends"),
    ),
)


def names() -> list[str]:
    return [s.name for s in CATALOGUE]


def get_scenario(name: str) -> Scenario:
    for scenario in CATALOGUE:
        if scenario.name == name:
            return scenario
    raise UsageError(
        f"unknown scenario {name!r}; `queue-chaos scenarios` lists them: "
        + ", ".join(names())
    )
