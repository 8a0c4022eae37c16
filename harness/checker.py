"""The checker: properties over a history and the queue's final state, and a verdict."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import UsageError
from harness.history import ops_by_key, story
from harness.jobs import expected_outcome

if TYPE_CHECKING:
    from harness.adapters.base import Semantics

__all__ = [
    "JOB_STATES",
    "LIVENESS",
    "NOTED",
    "PROPERTIES",
    "SAFETY",
    "Anomaly",
    "JobState",
    "Verdict",
    "check",
    "check_safety",
]

logger = logging.getLogger("queue_chaos.checker")

# Violations judged on the history alone, at any moment of a run.
SAFETY = ("unexpected", "concurrent", "retry_exceeded")
# Violations judged only on a drained run with the queue's final state.
LIVENESS = ("lost", "stuck", "state_mismatch", "gave_up_early", "effects")
# Reported with their stories, yet allowed under at-least-once delivery.
NOTED = ("recovered", "duplicated")
PROPERTIES = (
    "lost",
    "recovered",
    "unexpected",
    "duplicated",
    "concurrent",
    "retry_exceeded",
    "gave_up_early",
    "stuck",
    "state_mismatch",
    "effects",
)

JOB_STATES = ("pending", "running", "done", "dead", "missing")
_WAITING = ("pending", "running")
_ACTED = "acted"
# Faults that cannot cost a correct queue a lease: it takes every time that
# decides a lease from the database's clock, never from a worker's (DESIGN.md).
_LEASE_NEUTRAL = ("skew-clock",)


@dataclass(frozen=True)
class JobState:
    """One job in the queue's final snapshot.

    ``state`` is pending, running, done, dead or missing (no row: never
    enqueued, or deleted).  ``attempts`` is the queue's own count, None if the
    queue keeps none.  ``effects`` counts committed effect rows, only in
    transactional-completion mode.
    """

    state: str
    attempts: int | None
    last_error: str | None = None
    effects: int | None = None

    def __post_init__(self) -> None:
        if self.state not in JOB_STATES:
            raise UsageError(
                f"job state {self.state!r} is not one of {', '.join(JOB_STATES)}"
            )
        attempts = self.attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0
        ):
            raise UsageError(
                f"job attempts {attempts!r} must be an integer >= 0, or None"
            )


_MISSING = JobState("missing", None)


@dataclass(frozen=True)
class Anomaly:
    """One job that shows a property: its kind, key, story and what is wrong."""

    kind: str
    key: str
    story: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "key": self.key,
            "detail": self.detail,
            "story": self.story,
        }


@dataclass
class Verdict:
    """valid is True, False or "unknown"; counts is a flat record of the run.

    Each property's count is the number of jobs that show it, None where the
    property was not judged (liveness without a drained final state, effects
    outside transactional-completion mode).  ``reason`` says why the verdict
    is unknown.
    """

    valid: bool | Literal["unknown"]
    counts: dict[str, Any] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    reason: str | None = None

    @property
    def violations(self) -> list[Anomaly]:
        """The anomalies that make a run invalid (not recovered, not duplicated)."""
        return [anomaly for anomaly in self.anomalies if anomaly.kind not in NOTED]

    def to_dict(self) -> dict[str, Any]:
        counts = dict(self.counts)
        if "duplicated_distribution" in counts:
            counts["duplicated_distribution"] = {
                str(runs): jobs
                for runs, jobs in sorted(counts["duplicated_distribution"].items())
            }
        return {
            "valid": self.valid,
            "reason": self.reason,
            "counts": counts,
            "anomalies": [anomaly.to_dict() for anomaly in self.anomalies],
        }


@dataclass
class _Execution:
    key: str
    n: int
    worker: str | None
    start_ns: int
    end_ns: int | None = None
    outcome: str | None = None


@dataclass
class _Job:
    key: str
    behaviour: str | None = None
    invokes: int = 0
    outcomes: Counter = field(default_factory=Counter)
    executions: dict[int, _Execution] = field(default_factory=dict)

    @property
    def enqueue(self) -> str | None:
        """ok, info (outcome unknown), fail, or None if never enqueued."""
        if self.outcomes["ok"]:
            return "ok"
        if self.outcomes["info"] or self.invokes > self.outcomes["fail"]:
            return "info"
        if self.outcomes["fail"]:
            return "fail"
        return None

    @property
    def successes(self) -> int:
        return sum(1 for run in self.executions.values() if run.outcome == "ok")


@dataclass
class _Fault:
    id: Any
    start_ns: int
    end_ns: int | None
    targets: tuple[str, ...]
    acted: bool


def check(
    ops: Iterable[dict[str, Any]],
    final: Mapping[str, JobState] | None,
    semantics: Semantics,
    *,
    drained: bool,
    complete: bool = True,
) -> Verdict:
    """Judge a run: every property over ``ops`` and the queue's ``final`` state.

    Safety properties are judged on the history alone.  Liveness needs the
    final state of a drained run and a complete history; otherwise it is not
    judged and the verdict is unknown, unless safety already failed.  A job
    whose key is absent from ``final`` counts as missing.  If the checker
    itself fails, the verdict is unknown with the reason, never False.

    A run that did not drain, yet has its final state and a complete history,
    ended because the drain deadline passed: a job that still waits then and
    would end under a correct queue is stuck, and liveness is judged on that
    state.  Without a violation the verdict stays unknown.
    """
    if final is not None and complete and not drained:
        verdict = _guarded(ops, final, semantics, None)
        if verdict.valid is False:
            return verdict
    if final is None:
        not_judged = "the queue's final state was not taken"
    elif not drained:
        not_judged = "the run did not drain"
    elif not complete:
        not_judged = "the history is incomplete"
    else:
        not_judged = None
    return _guarded(ops, final if not_judged is None else None, semantics, not_judged)


def check_safety(ops: Iterable[dict[str, Any]], semantics: Semantics) -> Verdict:
    """Judge only what may be judged mid-run: unexpected, concurrent, retry_exceeded.

    Valid is True or False (unknown only if the checker itself fails).
    """
    return _guarded(ops, None, semantics, None)


def _guarded(
    ops: Iterable[dict[str, Any]],
    final: Mapping[str, JobState] | None,
    semantics: Semantics,
    not_judged: str | None,
) -> Verdict:
    try:
        return _judge(list(ops), final, semantics, not_judged)
    except Exception as exc:
        logger.error("checker failed", exc_info=True)
        return Verdict("unknown", reason=f"the checker failed: {exc!r}")


def _judge(
    ops: list[dict[str, Any]],
    final: Mapping[str, JobState] | None,
    semantics: Semantics,
    not_judged: str | None,
) -> Verdict:
    """Safety always; liveness when ``final`` is given; unknown if ``not_judged``."""
    ops.sort(key=lambda op: op["t"])
    jobs = _jobs(ops)
    faults = _faults(ops)
    workers = {op["worker"] for op in ops if op.get("worker") is not None}
    start_ns = ops[0]["t"] if ops else 0
    stories = ops_by_key(ops)
    found: list[tuple[str, str, str]] = []

    for job in jobs.values():
        found += _safety(job, faults, workers, semantics)
        found += _noted(job)

    undecided: list[str] = []
    if final is not None:
        for job in jobs.values():
            state = final.get(job.key, _MISSING)
            found += _liveness(job, state, semantics, undecided)

    found.sort(key=lambda item: (PROPERTIES.index(item[0]), item[1]))
    anomalies = [
        Anomaly(kind, key, story(stories.get(key, []), start_ns=start_ns), detail)
        for kind, key, detail in found
    ]
    counts = _counts(jobs, anomalies, final is not None, semantics)
    if undecided:
        counts["effects"] = None
    violated = any(anomaly.kind not in NOTED for anomaly in anomalies)
    if violated:
        return Verdict(False, counts, anomalies)
    if not_judged is not None:
        reason = f"liveness not judged: {not_judged}"
        return Verdict("unknown", counts, anomalies, reason)
    if undecided:
        return Verdict("unknown", counts, anomalies, "; ".join(undecided))
    return Verdict(True, counts, anomalies)


def _jobs(ops: list[dict[str, Any]]) -> dict[str, _Job]:
    jobs: dict[str, _Job] = {}
    for op in ops:
        kind = op.get("f")
        if kind not in ("enqueue", "execute"):
            continue
        key = op["key"]
        job = jobs.setdefault(key, _Job(key))
        if kind == "enqueue":
            if op["type"] == "invoke":
                job.invokes += 1
                job.behaviour = op.get("behaviour", job.behaviour)
            else:
                job.outcomes[op["type"]] += 1
            continue
        run = job.executions.get(op["n"])
        if run is None:
            run = job.executions[op["n"]] = _Execution(
                key, op["n"], op.get("worker"), op["t"]
            )
        if op["type"] != "invoke":
            run.end_ns = op["t"]
            run.outcome = op["type"]
    return jobs


def _faults(ops: list[dict[str, Any]]) -> list[_Fault]:
    faults: dict[Any, _Fault] = {}
    for op in ops:
        if op.get("f") != "fault":
            continue
        fault = faults.get(op["id"])
        if fault is None:
            fault = faults[op["id"]] = _Fault(op["id"], op["t"], None, (), True)
        if op["type"] != "invoke":
            fault.end_ns = op["t"]
        targets = op.get("targets")
        if targets:
            fault.targets = (targets,) if isinstance(targets, str) else tuple(targets)
        # Only a fault that acted can have cost anyone a lease; one that found
        # nothing to act on, or was refused, changed nothing.
        if op.get("effect", _ACTED) != _ACTED:
            fault.acted = False
        # A skewed clock acts, yet costs a correct queue no lease (a skewed
        # worker killed at the heal leaves only executions that never ended).
        if op.get("fault") in _LEASE_NEUTRAL:
            fault.acted = False
    return list(faults.values())


def _safety(
    job: _Job, faults: list[_Fault], workers: set[str], semantics: Semantics
) -> list[tuple[str, str, str]]:
    found = []
    runs = len(job.executions)
    if runs and job.enqueue in (None, "fail"):
        why = "never enqueued" if job.enqueue is None else "its enqueue failed"
        found.append(("unexpected", job.key, f"executed {runs} time(s), yet {why}"))
    if runs > semantics.max_attempts:
        found.append(
            (
                "retry_exceeded",
                job.key,
                f"{runs} executions, max_attempts {semantics.max_attempts}",
            )
        )
    overlaps = _overlaps(job, faults, workers, semantics)
    if overlaps:
        found.append(("concurrent", job.key, "; ".join(overlaps)))
    return found


def _overlaps(
    job: _Job, faults: list[_Fault], workers: set[str], semantics: Semantics
) -> list[str]:
    runs = sorted(job.executions.values(), key=lambda run: run.start_ns)
    lease_ns = int(semantics.lease_s * 1e9)
    overlaps = []
    for index, earlier in enumerate(runs):
        if earlier.end_ns is None:
            continue
        for later in runs[index + 1 :]:
            if later.start_ns >= earlier.end_ns:
                break
            # Without a heartbeat the lease simply runs out; a second claim
            # after that is at-least-once delivery, not a double holder.
            expired = later.start_ns - earlier.start_ns >= lease_ns
            if semantics.heartbeat_s is None and expired:
                continue
            if _excused(earlier, later, faults, workers):
                continue
            overlap_ms = (earlier.end_ns - later.start_ns) / 1e6
            overlaps.append(
                f"execution {later.n} ({later.worker}) started {overlap_ms:.1f} ms "
                f"before execution {earlier.n} ({earlier.worker}) ended, "
                f"with no fault on {earlier.worker}"
            )
    return overlaps


def _excused(
    earlier: _Execution, later: _Execution, faults: list[_Fault], workers: set[str]
) -> bool:
    """Whether a fault that acted could have cost the earlier holder its lease.

    A fault counts if it was active at some moment between the two starts and
    touched the earlier execution's worker: named it, or named anything that
    is not a worker (the database, a proxy), which every worker depends on.
    """
    for fault in faults:
        if not fault.acted or fault.start_ns > later.start_ns:
            continue
        if fault.end_ns is not None and fault.end_ns < earlier.start_ns:
            continue
        for target in fault.targets:
            is_worker = target in workers or target.startswith("worker-")
            if target == earlier.worker or not is_worker:
                return True
    return False


def _noted(job: _Job) -> list[tuple[str, str, str]]:
    found = []
    runs = len(job.executions)
    if runs and job.enqueue == "info":
        found.append(
            ("recovered", job.key, f"enqueue outcome unknown, executed {runs} time(s)")
        )
    if job.successes > 1:
        found.append(
            ("duplicated", job.key, f"{job.successes} successful executions")
        )
    return found


def _liveness(
    job: _Job, state: JobState, semantics: Semantics, undecided: list[str]
) -> list[tuple[str, str, str]]:
    found = []
    key = job.key
    runs = len(job.executions)

    if job.enqueue == "fail":
        if state.state != "missing":
            found.append(
                (
                    "state_mismatch",
                    key,
                    f"its enqueue failed, yet the queue holds it as {state.state}",
                )
            )
        return found
    if job.enqueue is None:
        return found

    succeeded = job.successes > 0
    attempts_used = max(state.attempts or 0, runs)
    max_attempts = semantics.max_attempts
    used = f"{attempts_used} of {max_attempts} attempts used"
    # A hang that no job timeout ends has no final state to wait for.
    ends = job.behaviour is None or expected_outcome(job.behaviour, semantics)

    if state.state in _WAITING and ends:
        found.append(("stuck", key, f"{state.state} after the drain, {used}"))
    legitimately_dead = state.state == "dead" and attempts_used >= max_attempts
    if (
        job.enqueue == "ok"
        and not succeeded
        and state.state not in _WAITING
        and not legitimately_dead
    ):
        found.append(
            (
                "lost",
                key,
                f"acknowledged, never executed to success, {state.state} "
                f"with {used}",
            )
        )
    if state.state == "dead" and attempts_used < max_attempts:
        found.append(("gave_up_early", key, f"dead with {used}"))

    mismatches = []
    if state.state == "done" and not succeeded:
        mismatches.append("done without a successful execution")
    counted = state.attempts is not None and state.state != "missing"
    if counted and state.attempts < runs:
        mismatches.append(
            f"the queue counts {state.attempts} attempt(s) for {runs} execution(s)"
        )
    if mismatches:
        found.append(("state_mismatch", key, "; ".join(mismatches)))

    if semantics.transactional_completion:
        judged = state.state == "done" or (
            state.state == "missing" and succeeded and state.effects is not None
        )
        if judged and state.effects is None:
            undecided.append(f"no effect count was reported for done job {key}")
        elif judged and state.effects != 1:
            found.append(
                ("effects", key, f"{state.effects} committed effects, expected 1")
            )
    return found


def _counts(
    jobs: dict[str, _Job],
    anomalies: list[Anomaly],
    judged: bool,
    semantics: Semantics,
) -> dict[str, Any]:
    enqueues = Counter(job.enqueue for job in jobs.values())
    shown = Counter(anomaly.kind for anomaly in anomalies)
    counts: dict[str, Any] = {
        "attempted": sum(1 for job in jobs.values() if job.invokes),
        "acknowledged": enqueues["ok"],
        "indeterminate": enqueues["info"],
        "failed_enqueues": enqueues["fail"],
        "executions": sum(len(job.executions) for job in jobs.values()),
    }
    for kind in PROPERTIES:
        counts[kind] = shown[kind]
    if not judged:
        for kind in LIVENESS:
            counts[kind] = None
    if not semantics.transactional_completion:
        counts["effects"] = None
    counts["duplicated_distribution"] = dict(
        sorted(Counter(j.successes for j in jobs.values() if j.successes > 1).items())
    )
    return counts
