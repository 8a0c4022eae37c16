"""The comparison: bad adapters become unknown cells, a dead worker fails preflight."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.adapters.refqueue import RefQueueAdapter
from harness.compare import Cell, Column, _missing_feature, compare, preflight


class NeverStartingAdapter(RefQueueAdapter):
    """refqueue whose worker process exits at once, as a broken install would."""

    def worker_command(self, dsn: str, worker: str) -> list[str]:
        return [sys.executable, "-c", "print('cannot start'); raise SystemExit(3)"]


def test_a_worker_that_never_runs_a_job_fails_preflight_with_its_last_words(
    pg_server: Any, tmp_path: Path
) -> None:
    reason = preflight(NeverStartingAdapter(), pg_server, tmp_path, timeout_s=2)

    assert reason == (
        "its worker did not run a job within 2 s (last worker output: cannot start)"
    )


@pytest.mark.slow
def test_a_worker_that_runs_passes_preflight(pg_server: Any, tmp_path: Path) -> None:
    assert preflight(RefQueueAdapter(), pg_server, tmp_path, timeout_s=30) is None


@pytest.mark.slow
def test_compare_goes_on_past_unknown_adapters_and_fills_every_cell(
    tmp_path: Path,
) -> None:
    said: list[str] = []

    folder = compare(
        ["refqueue", "no-such-queue", "pgqueuer==bad version"],
        ["f1-transient-failures"], reports_dir=tmp_path, seed=3, processes=1,
        say=said.append,
    )

    card = json.loads((folder / "scorecard.json").read_text())
    cells = {c["adapter"]: c for c in card["cells"]}
    assert cells["refqueue"]["result"] == "passed"
    assert cells["no-such-queue"]["result"] == "unknown"
    assert "unknown adapter 'no-such-queue'" in cells["no-such-queue"]["reason"]
    assert cells["pgqueuer==bad version"]["result"] == "unknown"
    assert "not a version number" in cells["pgqueuer==bad version"]["reason"]
    assert sum("unavailable" in line for line in said) == 2
    markdown = (folder / "scorecard.md").read_text()
    assert "| f1-transient-failures | passed ([report](runs/" in markdown
    assert Path(folder, cells["refqueue"]["report"]).exists()


def test_a_scenario_that_needs_a_missing_feature_is_a_failed_cell_with_a_report(
    tmp_path: Path,
) -> None:
    column = Column("pq", "pq", "pq", "1.9.1")

    cell = _missing_feature(tmp_path, "f5-hung-jobs-and-paused-workers", column)

    assert cell.result == "failed"
    assert "needs transactional completion" in cell.reason
    assert "which pq 1.9.1 does not offer" in cell.reason
    assert "Not played" in Path(cell.report).read_text()


def test_cells_read_as_passed_failed_with_kinds_or_unknown_with_reason(
    tmp_path: Path,
) -> None:
    failed = Cell("s", "a", "failed", {"stuck": 2, "lost": 1},
                  report=str(tmp_path / "runs" / "r" / "report.md"))
    unknown = Cell("s", "a", "unknown", reason="adapter unavailable: no python\nx")

    assert failed.text(tmp_path) == (
        "**failed**: lost 1, stuck 2 ([report](runs/r/report.md))"
    )
    assert unknown.text(tmp_path) == "unknown: adapter unavailable: no python x"
