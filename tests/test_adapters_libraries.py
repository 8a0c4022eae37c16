"""Each queue library's adapter runs one job through the library's own worker."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.adapters import get_adapter, libraries
from harness.compare import preflight

CREATE_ENVS = "QUEUE_CHAOS_CREATE_ENVS"


def ready_adapter(name: str) -> Any:
    """The adapter with its environment, or a skip that says why not."""
    adapter = get_adapter(name)
    reason = adapter.unavailable()
    if reason:
        pytest.skip(f"{name} cannot run here: {reason}")
    if not adapter.env_ready() and not os.environ.get(CREATE_ENVS):
        pytest.skip(
            f"the environment of {name} is not created (it downloads packages); "
            f"run `queue-chaos env create {name}` or set {CREATE_ENVS}=1"
        )
    adapter.ensure_env()
    return adapter


def ledger_events(folder: Path) -> list[tuple[str, str]]:
    events = []
    for path in (folder / "ledger").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            events.append((record["key"], record["event"]))
    return events


@pytest.mark.slow
@pytest.mark.parametrize("name", libraries())
def test_one_job_runs_through_the_library_worker_and_ends_done(
    name: str, pg_server: Any, tmp_path: Path
) -> None:
    adapter = ready_adapter(name)

    reason = preflight(adapter, pg_server, tmp_path, timeout_s=60)

    assert reason is None
    assert sorted(ledger_events(tmp_path)) == [
        ("preflight", "ok"), ("preflight", "start"),
    ]


@pytest.mark.parametrize("name", libraries())
def test_a_library_adapter_declares_its_version_semantics_and_configuration(
    name: str,
) -> None:
    adapter = get_adapter(name)

    assert adapter.version() == adapter.default_version
    assert adapter.semantics.max_attempts >= 1
    assert adapter.configured and all(
        isinstance(line, str) and line for line in adapter.configured
    )


def test_a_pinned_older_release_is_its_own_adapter_and_environment() -> None:
    adapter = get_adapter("pgqueuer==0.23.0")

    assert adapter.name == "pgqueuer==0.23.0"
    assert adapter.version() == "0.23.0"
    assert adapter.spec.folder_name == "pgqueuer-0.23.0"
    assert adapter.spec.pins[0] == "pgqueuer==0.23.0"
