"""Programs of faults drawn by Hypothesis against the queue under test break nothing."""

# The `ci` profile of harness.stateful runs here. Choose another with
# QUEUE_CHAOS_HYPOTHESIS_PROFILE=deep, or with `-p harness.stateful
# --hypothesis-profile deep` (the -p registers the profiles before pytest
# reads the option).

import pytest

from harness import stateful

pytestmark = pytest.mark.slow


def test_no_program_of_faults_breaks_the_queue(request, adapter_name, pg_server):
    queue_machine = stateful.machine(
        adapter_name, pg_server, network=request.getfixturevalue("network"),
        reports_dir=request.config.getoption("reports"),
    )

    stateful.run_machine(queue_machine)
