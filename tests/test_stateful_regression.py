"""Programs the state machine shrank, kept: each breaks its queue, not refqueue."""

from __future__ import annotations

import pytest

from harness import stateful

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("adapter", "kind"),
    [("refqueue", None), ("refqueue:no_lease_expiry", "stuck")],
)
def test_a_job_whose_worker_is_killed_mid_run_is_claimed_again(
    pg_server, tmp_path, adapter, kind
):
    # named as the state machine names it in the programs it prints
    QueueMachine = stateful.machine(  # noqa: N806
        adapter, pg_server, reports_dir=tmp_path
    )

    def program():
        # Printed by the state machine against refqueue:no_lease_expiry.
        state = QueueMachine()
        state.enqueue(behaviour='slow:1', jobs=1)
        state.kill_worker()
        state.teardown()

    if kind is None:
        program()
        return
    with pytest.raises(stateful.QueueViolation) as broken:
        program()
    assert kind in broken.value.kinds, broken.value
