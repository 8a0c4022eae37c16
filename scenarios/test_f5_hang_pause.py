"""Scenario f5-hung-jobs-and-paused-workers: hung jobs time out, and a paused worker cannot complete a job it lost."""

import pytest

pytestmark = pytest.mark.slow


def test_hung_jobs_time_out_and_a_paused_worker_cannot_complete_a_lost_job(
    check_scenario,
):
    check_scenario("f5-hung-jobs-and-paused-workers")
