"""Scenario f3-worker-killed: a worker SIGKILLed mid-job loses nothing."""

import pytest

pytestmark = pytest.mark.slow


def test_a_worker_sigkilled_mid_job_loses_nothing(check_scenario):
    check_scenario("f3-worker-killed")
