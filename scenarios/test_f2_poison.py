"""Scenario f2-poison-jobs: a job that fails every time ends dead after max attempts."""

import pytest

pytestmark = pytest.mark.slow


def test_a_job_that_fails_every_time_ends_dead_after_max_attempts(check_scenario):
    check_scenario("f2-poison-jobs")
