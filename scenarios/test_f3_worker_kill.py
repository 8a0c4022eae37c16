"""Scenario f3-worker-killed: a worker SIGKILLed mid-job loses nothing."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_a_worker_sigkilled_mid_job_loses_nothing(check_scenario):
    result = check_scenario("f3-worker-killed")

    # the report says which worker each kill hit
    faults = json.loads((result.report_dir / "results.json").read_text())["faults"]
    assert faults and all(f["fault"] == "kill-worker" for f in faults)
    assert all(
        f["effect"] == "acted" and f["targets"][0].startswith("worker-") for f in faults
    ), faults
    report_md = (result.report_dir / "report.md").read_text()
    assert f"| {faults[0]['targets'][0]} | acted |" in report_md
