"""Scenario f4-crashing-jobs: a job that crashes its process uses an attempt."""

import pytest

pytestmark = pytest.mark.slow


def test_a_job_that_crashes_its_process_uses_up_attempts_and_ends_dead(check_scenario):
    check_scenario("f4-crashing-jobs")
