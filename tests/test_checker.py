"""The checker on small literal histories: empty, sane, and one per property."""

from __future__ import annotations

import json

import pytest

from harness.adapters.base import Semantics
from harness.checker import JobState, Verdict, check, check_safety
from harness.history import story

MS = 1_000_000

# Heartbeat on: a healthy worker's lease never runs out.
SEMANTICS = Semantics(max_attempts=3, lease_s=10.0, heartbeat_s=1.0)


def enqueue(key, t_ms, behaviour="ok", outcome="ok", process="client-0"):
    ops = [
        {
            "t": t_ms * MS,
            "process": process,
            "f": "enqueue",
            "type": "invoke",
            "key": key,
            "behaviour": behaviour,
        }
    ]
    if outcome is not None:
        op = {"t": (t_ms + 1) * MS, "process": process, "f": "enqueue"}
        op.update(type=outcome, key=key)
        if outcome != "ok":
            op["error"] = "connection lost"
        ops.append(op)
    return ops


def execution(key, n, start_ms, end_ms=None, outcome="ok", worker="worker-0"):
    base = {"process": worker, "f": "execute", "key": key, "n": n, "worker": worker}
    ops = [{"t": start_ms * MS, "type": "invoke", "pid": 100, **base}]
    if end_ms is not None:
        ops.append({"t": end_ms * MS, "type": outcome, "pid": 100, **base})
    return ops


def fault(fault_id, targets, start_ms, end_ms=None, effect="acted"):
    base = {"process": "nemesis", "f": "fault", "id": fault_id, "targets": targets}
    ops = [{"t": start_ms * MS, "type": "invoke", "fault": "pause", **base}]
    ops[0]["effect"] = effect
    if end_ms is not None:
        ops.append({"t": end_ms * MS, "type": "info", **base})
    return ops


def counts(**changed):
    """The full counts of a judged run: all zero unless changed."""
    base = {
        "attempted": 0,
        "acknowledged": 0,
        "indeterminate": 0,
        "failed_enqueues": 0,
        "executions": 0,
        "lost": 0,
        "recovered": 0,
        "unexpected": 0,
        "duplicated": 0,
        "concurrent": 0,
        "retry_exceeded": 0,
        "gave_up_early": 0,
        "stuck": 0,
        "state_mismatch": 0,
        "effects": None,
        "duplicated_distribution": {},
    }
    assert set(changed) <= set(base)
    base.update(changed)
    return base


def unjudged(**changed):
    """The full counts of a run whose liveness was not judged."""
    none = dict.fromkeys(("lost", "stuck", "state_mismatch", "gave_up_early"))
    return counts(**{**none, **changed})


def kinds(verdict: Verdict):
    return [(anomaly.kind, anomaly.key) for anomaly in verdict.anomalies]


def test_an_empty_drained_history_is_valid():
    verdict = check([], {}, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts()
    assert kinds(verdict) == []
    assert verdict.reason is None


def test_an_empty_history_without_a_final_state_is_unknown():
    verdict = check([], None, SEMANTICS, drained=True)

    assert verdict.valid == "unknown"
    assert verdict.counts == unjudged()
    assert kinds(verdict) == []
    assert verdict.reason == (
        "liveness not judged: the queue's final state was not taken"
    )


def test_a_sane_history_is_valid():
    ops = [
        *enqueue("j1", 0),
        *enqueue("j2", 2, "fail_first:1"),
        *enqueue("j3", 4, "fail_always"),
        *execution("j1", 1, 10, 11),
        *execution("j2", 1, 12, 13, "fail"),
        *execution("j2", 2, 20, 21, worker="worker-1"),
        *execution("j3", 1, 14, 15, "fail"),
        *execution("j3", 2, 22, 23, "fail"),
        *execution("j3", 3, 30, 31, "fail"),
    ]
    final = {
        "j1": JobState("done", 1),
        "j2": JobState("done", 2),
        "j3": JobState("dead", 3, "JobFailed"),
    }

    verdict = check(ops, final, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(attempted=3, acknowledged=3, executions=6)
    assert kinds(verdict) == []


def test_an_acknowledged_job_never_run_and_gone_is_lost():
    ops = [*enqueue("j1", 0), *enqueue("j2", 2), *execution("j2", 1, 5, 6)]
    final = {"j2": JobState("done", 1)}

    verdict = check(ops, final, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(attempted=2, acknowledged=2, executions=1, lost=1)
    assert kinds(verdict) == [("lost", "j1")]
    assert verdict.anomalies[0].detail == (
        "acknowledged, never executed to success, missing with 0 of 3 attempts used"
    )


def test_a_job_deleted_after_its_attempts_failed_is_lost_not_dead():
    ops = [
        *enqueue("j1", 0, "fail_always"),
        *execution("j1", 1, 5, 6, "fail"),
        *execution("j1", 2, 7, 8, "fail"),
        *execution("j1", 3, 9, 10, "fail"),
    ]

    verdict = check(ops, {"j1": JobState("missing", None)}, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(attempted=1, acknowledged=1, executions=3, lost=1)
    assert kinds(verdict) == [("lost", "j1")]


def test_a_job_dead_after_faults_used_all_its_attempts_is_not_an_anomaly():
    ops = [
        *enqueue("j1", 0, "ok"),
        *execution("j1", 1, 5),
        *execution("j1", 2, 50),
        *execution("j1", 3, 90),
        *fault("f1", ["worker-0"], 6, 100),
    ]

    verdict = check(ops, {"j1": JobState("dead", 3)}, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(attempted=1, acknowledged=1, executions=3)
    assert kinds(verdict) == []


def test_an_indeterminate_enqueue_that_ran_is_recovered_and_one_that_did_not_is_fine():
    ops = [
        *enqueue("j1", 0, outcome="info"),
        *enqueue("j2", 2, outcome="info"),
        *enqueue("j3", 4, outcome=None),
        *execution("j1", 1, 5, 6),
    ]
    final = {"j1": JobState("done", 1)}

    verdict = check(ops, final, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(
        attempted=3, indeterminate=3, executions=1, recovered=1
    )
    assert kinds(verdict) == [("recovered", "j1")]


def test_an_execution_never_enqueued_or_whose_enqueue_failed_is_unexpected():
    ops = [
        *enqueue("j1", 0, outcome="fail"),
        *execution("j1", 1, 5, 6),
        *execution("ghost", 1, 7, 8),
    ]

    verdict = check(ops, {}, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=1, failed_enqueues=1, executions=2, unexpected=2
    )
    assert kinds(verdict) == [("unexpected", "ghost"), ("unexpected", "j1")]
    assert verdict.anomalies[1].detail == "executed 1 time(s), yet its enqueue failed"


def test_two_successful_runs_are_counted_as_duplicated_but_valid():
    ops = [
        *enqueue("j1", 0),
        *enqueue("j2", 2),
        *execution("j1", 1, 5, 6),
        *execution("j1", 2, 7, 8, worker="worker-1"),
        *execution("j2", 1, 9, 10),
    ]
    final = {"j1": JobState("done", 2), "j2": JobState("done", 1)}

    verdict = check(ops, final, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(
        attempted=2,
        acknowledged=2,
        executions=3,
        duplicated=1,
        duplicated_distribution={2: 1},
    )
    assert kinds(verdict) == [("duplicated", "j1")]


OVERLAP = [
    *enqueue("j1", 0),
    *execution("j1", 1, 10, 100, worker="worker-0"),
    *execution("j1", 2, 50, 60, worker="worker-1"),
]


@pytest.mark.parametrize(
    ("faults", "semantics", "concurrent"),
    [
        pytest.param([], SEMANTICS, 1, id="no-fault"),
        pytest.param(fault("f1", ["worker-0"], 20, 30), SEMANTICS, 0, id="paused"),
        pytest.param(
            [{**op, "fault": "skew-clock"} for op in fault("f1", ["worker-0"], 5)],
            SEMANTICS,
            1,
            id="clock-skew-costs-no-lease",
        ),
        pytest.param(fault("f1", "db", 5, 15), SEMANTICS, 0, id="db-fault"),
        pytest.param(fault("f1", ["proxy-workers"], 40), SEMANTICS, 0, id="proxy"),
        pytest.param(fault("f1", ["worker-1"], 20, 30), SEMANTICS, 1, id="other"),
        pytest.param(fault("f1", ["worker-0"], 1, 5), SEMANTICS, 1, id="healed"),
        pytest.param(fault("f1", ["worker-0"], 55), SEMANTICS, 1, id="too-late"),
        pytest.param(
            fault("f1", ["worker-0"], 20, 30, effect="nothing to act on"),
            SEMANTICS,
            1,
            id="no-effect",
        ),
        pytest.param(
            fault("f1", ["db"], 20, 30, effect="refused"), SEMANTICS, 1, id="refused"
        ),
        pytest.param(
            [],
            Semantics(max_attempts=3, lease_s=0.03),
            0,
            id="lease-ran-out-without-heartbeat",
        ),
        pytest.param(
            [],
            Semantics(max_attempts=3, lease_s=0.03, heartbeat_s=0.01),
            1,
            id="lease-extended-by-heartbeat",
        ),
    ],
)
def test_overlapping_executions_are_concurrent_unless_a_fault_explains_them(
    faults, semantics, concurrent
):
    final = {"j1": JobState("done", 2)}

    verdict = check([*OVERLAP, *faults], final, semantics, drained=True)

    assert verdict.valid is (not concurrent)
    assert verdict.counts == counts(
        attempted=1,
        acknowledged=1,
        executions=2,
        concurrent=concurrent,
        duplicated=1,
        duplicated_distribution={2: 1},
    )
    expected = [("concurrent", "j1")] if concurrent else []
    assert kinds(verdict) == [("duplicated", "j1"), *expected]


def test_a_concurrent_anomaly_says_which_executions_overlapped():
    verdict = check(OVERLAP, {"j1": JobState("done", 2)}, SEMANTICS, drained=True)

    assert verdict.anomalies[1].detail == (
        "execution 2 (worker-1) started 50.0 ms before execution 1 (worker-0) "
        "ended, with no fault on worker-0"
    )


def test_an_execution_without_a_known_end_overlaps_nothing():
    ops = [
        *enqueue("j1", 0, "crash_first:1"),
        *execution("j1", 1, 10),
        *execution("j1", 2, 50, 60, worker="worker-1"),
    ]

    verdict = check(ops, {"j1": JobState("done", 2)}, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(attempted=1, acknowledged=1, executions=2)
    assert kinds(verdict) == []


def test_more_executions_than_max_attempts_exceed_retries():
    ops = [
        *enqueue("j1", 0, "crash_first:3"),
        *execution("j1", 1, 10),
        *execution("j1", 2, 20),
        *execution("j1", 3, 30),
        *execution("j1", 4, 40, 41),
    ]

    verdict = check(ops, {"j1": JobState("done", 4)}, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=1, acknowledged=1, executions=4, retry_exceeded=1
    )
    assert kinds(verdict) == [("retry_exceeded", "j1")]


def test_a_job_dead_before_its_attempts_were_used_gave_up_early_and_is_lost():
    ops = [
        *enqueue("j1", 0, "fail_always"),
        *execution("j1", 1, 10, 11, "fail"),
        *execution("j1", 2, 20, 21, "fail"),
    ]

    verdict = check(ops, {"j1": JobState("dead", 2)}, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=1, acknowledged=1, executions=2, lost=1, gave_up_early=1
    )
    assert kinds(verdict) == [("lost", "j1"), ("gave_up_early", "j1")]


def test_attempts_used_count_the_queue_or_the_ledger_whichever_is_higher():
    ops = [*enqueue("j1", 0, "crash_always"), *execution("j1", 1, 10)]

    verdict = check(ops, {"j1": JobState("dead", 3)}, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(attempted=1, acknowledged=1, executions=1)
    assert kinds(verdict) == []


def test_a_job_still_waiting_after_the_drain_is_stuck():
    ops = [
        *enqueue("j1", 0),
        *enqueue("j2", 2, outcome="info"),
        *enqueue("j3", 4),
        *execution("j3", 1, 10),
    ]
    final = {
        "j1": JobState("pending", 0),
        "j2": JobState("pending", 0),
        "j3": JobState("running", 1),
    }

    verdict = check(ops, final, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=3, acknowledged=2, indeterminate=1, executions=1, stuck=3
    )
    assert kinds(verdict) == [("stuck", "j1"), ("stuck", "j2"), ("stuck", "j3")]


def test_a_hang_that_no_job_timeout_ends_is_not_stuck():
    ops = [*enqueue("j1", 0, "hang_always"), *execution("j1", 1, 10)]

    verdict = check(ops, {"j1": JobState("running", 1)}, SEMANTICS, drained=True)

    assert verdict.valid is True
    assert verdict.counts == counts(attempted=1, acknowledged=1, executions=1)
    assert kinds(verdict) == []


def test_a_final_state_that_disagrees_with_the_history_is_a_mismatch():
    ops = [
        *enqueue("j1", 0),
        *enqueue("j2", 2, "crash_first:1"),
        *enqueue("j3", 4, outcome="fail"),
        *execution("j2", 1, 10),
        *execution("j2", 2, 20, 21),
    ]
    final = {
        "j1": JobState("done", 1),
        "j2": JobState("done", 1),
        "j3": JobState("pending", 0),
    }

    verdict = check(ops, final, SEMANTICS, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=3,
        acknowledged=2,
        failed_enqueues=1,
        executions=2,
        lost=1,
        state_mismatch=3,
    )
    assert kinds(verdict) == [
        ("lost", "j1"),
        ("state_mismatch", "j1"),
        ("state_mismatch", "j2"),
        ("state_mismatch", "j3"),
    ]
    assert [anomaly.detail for anomaly in verdict.anomalies[1:]] == [
        "done without a successful execution",
        "the queue counts 1 attempt(s) for 2 execution(s)",
        "its enqueue failed, yet the queue holds it as pending",
    ]


TRANSACTIONAL = Semantics(
    max_attempts=3, lease_s=10.0, heartbeat_s=1.0, transactional_completion=True
)


def test_a_done_job_whose_effect_did_not_commit_exactly_once_breaks_effects():
    ops = [
        *enqueue("j1", 0),
        *enqueue("j2", 2),
        *enqueue("j3", 4),
        *execution("j1", 1, 10, 11),
        *execution("j2", 1, 12, 13),
        *execution("j3", 1, 14, 15),
    ]
    final = {
        "j1": JobState("done", 1, effects=1),
        "j2": JobState("done", 1, effects=0),
        "j3": JobState("done", 1, effects=2),
    }

    verdict = check(ops, final, TRANSACTIONAL, drained=True)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=3, acknowledged=3, executions=3, effects=2
    )
    assert kinds(verdict) == [("effects", "j2"), ("effects", "j3")]


def test_a_done_job_without_an_effect_count_leaves_effects_unknown():
    ops = [*enqueue("j1", 0), *execution("j1", 1, 10, 11)]

    verdict = check(ops, {"j1": JobState("done", 1)}, TRANSACTIONAL, drained=True)

    assert verdict.valid == "unknown"
    assert verdict.counts == counts(attempted=1, acknowledged=1, executions=1)
    assert kinds(verdict) == []
    assert verdict.reason == "no effect count was reported for done job j1"


def test_a_run_that_did_not_drain_with_no_job_stuck_is_unknown():
    ops = [*enqueue("j1", 0, "hang_always"), *execution("j1", 1, 10)]
    final = {"j1": JobState("running", 1)}

    verdict = check(ops, final, SEMANTICS, drained=False)

    assert verdict.valid == "unknown"
    assert verdict.counts == unjudged(attempted=1, acknowledged=1, executions=1)
    assert kinds(verdict) == []
    assert verdict.reason == "liveness not judged: the run did not drain"


def test_a_job_still_waiting_when_the_drain_deadline_passed_is_stuck():
    ops = [
        *enqueue("j1", 0),
        *enqueue("j2", 2, "hang_always"),
        *enqueue("j3", 4),
        *execution("j2", 1, 10),
        *execution("j3", 1, 12, 13),
    ]
    final = {
        "j1": JobState("pending", 0),
        "j2": JobState("running", 1),
        "j3": JobState("done", 1),
    }

    verdict = check(ops, final, SEMANTICS, drained=False)

    assert verdict.valid is False
    assert verdict.counts == counts(
        attempted=3, acknowledged=3, executions=2, stuck=1
    )
    assert kinds(verdict) == [("stuck", "j1")]
    assert verdict.reason is None


def test_an_undrained_run_with_an_incomplete_history_judges_no_liveness():
    ops = [*enqueue("j1", 0)]
    final = {"j1": JobState("pending", 0)}

    verdict = check(ops, final, SEMANTICS, drained=False, complete=False)

    assert verdict.valid == "unknown"
    assert verdict.counts == unjudged(attempted=1, acknowledged=1)
    assert kinds(verdict) == []
    assert verdict.reason == "liveness not judged: the run did not drain"


def test_an_incomplete_history_leaves_liveness_unjudged():
    ops = [*enqueue("j1", 0)]

    verdict = check(ops, {}, SEMANTICS, drained=True, complete=False)

    assert verdict.valid == "unknown"
    assert verdict.counts == unjudged(attempted=1, acknowledged=1)
    assert verdict.reason == "liveness not judged: the history is incomplete"


def test_a_safety_violation_is_false_even_when_liveness_is_not_judged():
    verdict = check(OVERLAP, None, SEMANTICS, drained=False)

    assert verdict.valid is False
    assert verdict.counts == unjudged(
        attempted=1,
        acknowledged=1,
        executions=2,
        concurrent=1,
        duplicated=1,
        duplicated_distribution={2: 1},
    )
    assert kinds(verdict) == [("duplicated", "j1"), ("concurrent", "j1")]


def test_a_checker_that_fails_says_unknown_never_false():
    broken = [*enqueue("j1", 0), {"t": 5, "process": "worker-0", "f": "execute"}]

    verdict = check(broken, {}, SEMANTICS, drained=True)

    assert verdict.valid == "unknown"
    assert verdict.counts == {}
    assert kinds(verdict) == []
    assert verdict.reason == "the checker failed: KeyError('key')"


def test_safety_alone_is_judged_mid_run():
    in_flight = [*enqueue("j1", 0, outcome=None), *execution("j1", 1, 10)]

    assert check_safety(in_flight, SEMANTICS).valid is True

    verdict = check_safety([*OVERLAP, *execution("j1", 3, 70)], SEMANTICS)

    assert verdict.valid is False
    assert verdict.counts == unjudged(
        attempted=1,
        acknowledged=1,
        executions=3,
        concurrent=1,
        duplicated=1,
        duplicated_distribution={2: 1},
    )
    assert kinds(verdict) == [("duplicated", "j1"), ("concurrent", "j1")]


def test_every_anomaly_carries_the_story_of_its_job():
    ops = [*enqueue("j1", 0), *fault("f1", ["db"], 3, 4), *execution("j2", 1, 5, 7)]

    verdict = check(ops, {}, SEMANTICS, drained=True)

    assert kinds(verdict) == [("lost", "j1"), ("unexpected", "j2")]
    assert verdict.anomalies[1].story == "\n".join(
        [
            "job j2",
            "        5.0 ms  worker-0  execute invoke  n=1 pid=100",
            "        7.0 ms  worker-0  execute ok      n=1 pid=100",
        ]
    )


def test_a_story_shows_each_op_with_its_time_process_and_fields():
    ops = [*enqueue("j1", 2, "fail_first:1", outcome="info"), *execution("j1", 1, 4, 5)]

    assert story(ops, start_ns=0) == "\n".join(
        [
            "job j1",
            "        2.0 ms  client-0  enqueue invoke  behaviour=fail_first:1",
            "        3.0 ms  client-0  enqueue info    error='connection lost'",
            "        4.0 ms  worker-0  execute invoke  n=1 pid=100",
            "        5.0 ms  worker-0  execute ok      n=1 pid=100",
        ]
    )
    assert story([]) == "(no ops)"


def test_a_verdict_turns_into_plain_json():
    verdict = check(OVERLAP, {"j1": JobState("done", 2)}, SEMANTICS, drained=True)

    data = json.loads(json.dumps(verdict.to_dict()))

    assert data["valid"] is False
    assert data["reason"] is None
    assert data["counts"]["duplicated_distribution"] == {"2": 1}
    assert [(a["kind"], a["key"]) for a in data["anomalies"]] == kinds(verdict)
    assert set(data["anomalies"][0]) == {"kind", "key", "detail", "story"}
