"""Many runs at once: one process per core, each with its own cluster.

`queue-chaos mutants` and `queue-chaos compare` hand a list of tasks (a
scenario, an adapter, a seed) to `run_many`, which plays them in a pool of
processes. Each process starts one ephemeral cluster (and one fault proxy
when a task needs it) and reuses it for every task it gets, as an xdist
worker does.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import util
from typing import Any


@dataclass(frozen=True)
class Task:
    """One run to play."""

    scenario: str
    adapter: str
    seed: int
    group: str = ""  # tasks of one group may be cancelled together


@dataclass
class Outcome:
    """What a task found: the verdict and the anomaly kinds, or the error."""

    task: Task
    valid: bool | str
    anomalies: dict[str, int] = field(default_factory=dict)
    report_dir: str | None = None
    seconds: float = 0.0
    error: str | None = None
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task": asdict(self.task)}


_state: dict[str, Any] = {}


def _init(reports_dir: str, pg_dsn: str | None, pg_bindir: str | None) -> None:
    from harness import postgres

    _state["reports_dir"] = reports_dir
    _state["server"] = postgres.server_from_env(pg_dsn, pg_bindir)
    util.Finalize(None, _close, exitpriority=10)


def _close() -> None:
    network = _state.pop("network", None)
    if network is not None:
        network.close()
    server = _state.pop("server", None)
    if server is not None:
        server.close()


def _network() -> Any:
    if "network" not in _state:
        from harness.network import Network

        _state["network"] = Network.start(_state["server"], seed=0)
    return _state["network"]


def _play(task: Task) -> Outcome:
    from harness.runner import run_scenario
    from harness.scenarios import get_scenario

    started = time.monotonic()
    try:
        scenario = get_scenario(task.scenario)
        server = _state["server"]
        if server.owned:
            server.thaw()
            server.start()
        result = run_scenario(
            scenario, adapter=task.adapter, server=server, seed=task.seed,
            reports_dir=_state["reports_dir"],
            network=_network() if scenario.needs_network else None,
        )
    except Exception as exc:
        return Outcome(
            task, "unknown", seconds=time.monotonic() - started,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}",
        )
    kinds: dict[str, int] = {}
    for anomaly in result.verdict.violations:
        kinds[anomaly.kind] = kinds.get(anomaly.kind, 0) + 1
    return Outcome(
        task, result.verdict.valid, kinds, str(result.report_dir),
        time.monotonic() - started,
        error=result.verdict.reason if result.verdict.valid == "unknown" else None,
    )


def run_many(
    tasks: Iterable[Task],
    *,
    reports_dir: str = "reports",
    processes: int | None = None,
    pg_dsn: str | None = None,
    pg_bindir: str | None = None,
    done: Callable[[Outcome], bool] | None = None,
) -> list[Outcome]:
    """Play tasks in a pool of processes; outcomes in the order of the tasks.

    `done(outcome)` is called as each task ends; when it returns True, the
    tasks of the same group that have not started yet are cancelled (their
    outcome says so).
    """
    tasks = list(tasks)
    processes = processes or os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    outcomes: dict[Task, Outcome] = {}
    cancelled_groups: set[str] = set()
    with ProcessPoolExecutor(
        max_workers=min(processes, max(len(tasks), 1)),
        mp_context=context,
        initializer=_init,
        initargs=(reports_dir, pg_dsn, pg_bindir),
    ) as pool:
        pending: dict[Future, Task] = {}
        queue = list(tasks)

        def submit_next() -> None:
            while queue and len(pending) < processes:
                task = queue.pop(0)
                if task.group and task.group in cancelled_groups:
                    outcomes[task] = Outcome(task, "unknown", cancelled=True)
                    continue
                pending[pool.submit(_play, task)] = task

        submit_next()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                task = pending.pop(future)
                outcome = future.result()
                outcomes[task] = outcome
                if done is not None and done(outcome) and task.group:
                    cancelled_groups.add(task.group)
            submit_next()
    return [outcomes[task] for task in tasks]
