"""Scenario f6-clock-skew: workers with a wrong wall clock break no lease."""

import pytest

pytestmark = pytest.mark.slow


def test_workers_whose_clock_is_wrong_break_no_lease(check_scenario):
    check_scenario("f6-clock-skew")
