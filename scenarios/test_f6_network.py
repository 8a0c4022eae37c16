"""Scenarios of the network: partitions, latency, resets, a black hole, cut data."""

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", [
    "f6-net-partition-workers",
    "f6-net-partition-clients",
    "f6-net-latency",
    "f6-net-resets",
    "f6-net-blackhole",
])
def test_the_queue_survives_a_broken_network(check_scenario, scenario):
    check_scenario(scenario)
