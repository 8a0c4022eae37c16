"""Scenarios run through the `run_scenario` fixture of the queue-chaos plugin."""

import pytest


def assert_valid(result) -> None:
    """Fail with the anomaly summary, each anomaly's story and the report path."""
    if result.verdict.valid is not True:
        pytest.fail(result.summary(), pytrace=False)


@pytest.fixture
def check_scenario(run_scenario, adapter_name):
    """Run a scenario against the adapter under test and require a valid verdict."""

    def play(name: str, **options):
        result = run_scenario(name, adapter=adapter_name, **options)
        assert_valid(result)
        return result

    return play
