"""Scenario f6-database-faults: workers survive crashes, freezes and cut links."""

import pytest

pytestmark = pytest.mark.slow


def test_workers_survive_database_crashes_restarts_freezes_and_cut_links(
    check_scenario,
):
    check_scenario("f6-database-faults")
