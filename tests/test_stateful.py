"""The state machine finds broken queues and shrinks the programs that break them."""

from __future__ import annotations

import time

import pytest
from hypothesis import settings

from harness import stateful
from harness.errors import UsageError

# Few, short programs of worker faults: enough to meet each of these bugs,
# cheap enough to find and shrink on two cores. Derandomized, so that the
# programs tried are the same on every run: a random draw of 8 meets a bug
# that needs a job in flight and a worker fault only about 9 times in 10.
HUNT = settings(
    stateful.profile("ci"), max_examples=8, stateful_step_count=4, derandomize=True
)
HUNT_SHRINK_BUDGET_S = 45.0


# The broken variants hunted: (mutant, kind of violation, most steps of the
# shrunk program, behaviours the hunt enqueues).
HUNTS = [
    # a job that fails or crashes was marked done first: 1 step (2 when a
    # worker fault, not the job, ends the execution)
    ("ack_before_work", "lost", 2, stateful.BEHAVIOURS),
    # a job that succeeds has used no attempt: 1 step
    ("attempts_on_exception_only", "state_mismatch", 1, stateful.BEHAVIOURS),
    # a job whose worker dies mid-run is never claimed again: 2 steps. Only a
    # job still running when its worker is killed meets the bug, so the hunt
    # enqueues quick and slow jobs only.
    ("no_lease_expiry", "stuck", 2, ("ok", "slow:2")),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutant", "kind", "max_steps", "behaviours"), HUNTS, ids=[h[0] for h in HUNTS]
)
def test_the_machine_finds_a_broken_queue_and_shrinks_its_program(
    pg_server, tmp_path, mutant, kind, max_steps, behaviours
):
    queue_machine = stateful.machine(
        f"refqueue:{mutant}", pg_server, reports_dir=tmp_path, faults=("workers",),
        behaviours=behaviours,
    )

    with pytest.raises(stateful.QueueViolation) as found:
        stateful.run_machine(
            queue_machine, settings=HUNT, shrink_budget_s=HUNT_SHRINK_BUDGET_S
        )

    violation = found.value
    assert kind in violation.kinds, violation
    assert 1 <= len(violation.steps) <= max_steps, violation
    assert (violation.report_dir / "report.md").exists()
    assert (violation.report_dir / "program.txt").read_text().count("state.") >= 2


def test_profiles_are_registered_and_chosen_by_name_or_environment(monkeypatch):
    monkeypatch.delenv(stateful.PROFILE_ENV, raising=False)
    assert stateful.profile_name() == "ci"
    assert stateful.profile().database is None
    assert stateful.profile().deadline is None

    monkeypatch.setenv(stateful.PROFILE_ENV, "deep")
    assert stateful.profile_name() == "deep"
    assert stateful.profile().database is not None
    assert stateful.profile("ci").max_examples < stateful.profile().max_examples


def test_an_unknown_profile_is_refused_with_the_known_ones(monkeypatch):
    monkeypatch.setenv(stateful.PROFILE_ENV, "nightly")

    with pytest.raises(UsageError, match="ci, deep"):
        stateful.profile()


def test_behaviours_outside_the_known_ones_are_refused(pg_server):
    with pytest.raises(UsageError, match="slow:2"):
        stateful.machine("refqueue", pg_server, behaviours=("slow:20",))


def test_the_machine_has_only_the_rules_its_run_can_play(pg_server):
    def rules(queue_machine):
        return {r.function.__name__ for r in queue_machine.setup_state().rules}

    workers_only = rules(stateful.machine("refqueue", pg_server, faults=("workers",)))
    with_server = rules(stateful.machine("refqueue", pg_server))

    assert "kill_worker" in workers_only and "server_crash" not in workers_only
    assert {"server_crash", "server_freeze", "server_thaw"} <= with_server
    assert "partition" not in with_server  # no network given


def test_a_failure_that_does_not_happen_again_is_reported_with_its_report(
    pg_server, tmp_path
):
    # A queue that fails once and never again, in place of a real flaky one:
    # the machine must replay the failure Hypothesis reports, not recall it.
    queue_machine = stateful.machine("refqueue", pg_server, faults=("workers",))
    report_dir = tmp_path / "the-failing-run"

    class FailsOnce(queue_machine):
        def _play(self, steps):
            if self.setup.failed:
                return None
            report_dir.mkdir()
            self.setup.failed.append(report_dir)
            self.setup.first_failure_s = time.monotonic()
            return stateful._Failure(AssertionError, "the queue broke, once")

    with pytest.raises(stateful.FailureNotReproduced) as flaky:
        stateful.run_machine(FailsOnce, settings=HUNT, shrink_budget_s=None)

    message = str(flaky.value)
    assert "non-reproducible failure" in message
    assert str(report_dir / "report.md") in message
