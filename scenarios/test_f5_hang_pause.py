"""Scenarios of F5: hung jobs time out; a paused or stalled worker loses its jobs."""

import pytest

pytestmark = pytest.mark.slow


def test_hung_jobs_time_out_and_a_paused_worker_cannot_complete_a_lost_job(
    check_scenario,
):
    check_scenario("f5-hung-jobs-and-paused-workers")


def test_a_stalled_worker_whose_jobs_ran_elsewhere_completes_none_of_them(
    check_scenario,
):
    check_scenario("f5-stalled-worker")
