"""Scenario f1-transient-failures: a job that fails once or twice ends done."""

import pytest

pytestmark = pytest.mark.slow


def test_a_job_that_fails_once_or_twice_is_retried_and_ends_done(check_scenario):
    check_scenario("f1-transient-failures")
