"""Scenario mixed-chaos: a random schedule of faults breaks nothing."""

import pytest

pytestmark = pytest.mark.slow


def test_a_random_schedule_of_faults_breaks_nothing(check_scenario):
    check_scenario("mixed-chaos")
