"""Reports of runs: results.json, report.md and a timeline plot, written atomically.

`results.json` has a stable schema (`SCHEMA`); `queue-chaos check` reads it
back together with `history.jsonl` and judges the history again offline.
Every file is written to a temporary name and renamed into place, so an
interrupted run leaves whole files or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.errors import ReportError

if TYPE_CHECKING:
    from harness.runner import Run, RunResult

SCHEMA = 1
STORIES_IN_SUMMARY = 5


# Reports are read by whoever may read the folder they are in: files and
# folders get the modes the process's umask gives, not tempfile's owner-only.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def unique_dir(parent: Path, prefix: str) -> Path:
    """Create a new folder parent/<prefix><random> with the umask's mode."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~_UMASK)
    return path


def new_run_dir(reports_dir: Path, scenario: str, adapter: str, seed: int) -> Path:
    """Create reports/<run-id>/; the id sorts by time and names the run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{scenario}-{adapter}-{seed}")
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
        return unique_dir(reports_dir, f"{stamp}-{slug}-")
    except OSError as exc:
        raise ReportError(
            f"cannot write reports to {str(reports_dir)!r} ({exc.strerror}); "
            "choose a writable folder with --reports"
        ) from None


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file whole or not at all."""
    mode = "wb" if isinstance(text, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def versions(adapter: Any, server: Any = None) -> dict[str, str]:
    found = {
        "queue-chaos": __version__,
        "python": platform.python_version(),
        "adapter": adapter.name,
        "library": f"{adapter.library} {adapter.version()}",
    }
    bindir = getattr(server, "bindir", None)
    if bindir is not None:
        found["postgres_bindir"] = str(bindir)
    return found


def results(result: RunResult, run: Run) -> dict[str, Any]:
    """The results.json record of a run."""
    verdict = result.verdict.to_dict()
    return {
        "schema": SCHEMA,
        "valid": verdict["valid"],
        "reason": verdict["reason"],
        "complete": result.complete,
        "scenario": result.scenario,
        "case": run.scenario.case,
        "adapter": result.adapter,
        "seed": result.seed,
        "workers": run.workers,
        "duration_s": run.duration_s,
        "drained": run.drained,
        "judged_liveness": run.final is not None,
        "counts": verdict["counts"],
        "anomalies": verdict["anomalies"],
        "faults": _faults(run),
        "semantics": dict(run.adapter.semantics.__dict__),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "versions": versions(run.adapter, run.server),
    }


def _faults(run: Run) -> list[dict[str, Any]]:
    """Each fault window, with what it hit (targets) and whether it acted.

    The nemesis starts the windows in the order of their start times and
    records each start in the history; a window the run never reached has
    no start and says so.
    """
    started = [
        op for op in run.history.ops()
        if op.get("f") == "fault" and op.get("type") == "invoke"
    ]
    windows = sorted(run.windows, key=lambda window: window.at_s)
    faults = []
    for index, window in enumerate(windows):
        fault = window.to_dict()
        op = started[index] if index < len(started) else None
        if op is not None and op.get("fault") == window.fault:
            fault["targets"] = list(op.get("targets") or [])
            fault["effect"] = op.get("effect", "acted")
        else:
            fault["targets"], fault["effect"] = [], "not started"
        faults.append(fault)
    return faults


def write(result: RunResult, run: Run) -> None:
    """Write results.json, report.md and timeline.png of a run."""
    record = results(result, run)
    run.history.close()
    if run.final is not None:
        final = {key: dict(state.__dict__) for key, state in run.final.items()}
        write_atomic(result.report_dir / "final.json", json.dumps(final))
    write_atomic(result.report_dir / "results.json", json.dumps(record, indent=2))
    with contextlib.suppress(Exception):
        from harness.timeline import plot

        png = plot(run.history.ops(), record)
        write_atomic(result.report_dir / "timeline.png", png)
    write_atomic(result.report_dir / "report.md", markdown(record))


def markdown(record: dict[str, Any]) -> str:
    """report.md: the verdict, the counts, the faults and each anomaly's story."""
    verdict = {True: "valid", False: "INVALID", "unknown": "unknown"}[record["valid"]]
    lines = [
        f"# {record['scenario']} against {record['adapter']}: {verdict}",
        "",
        f"Seed {record['seed']}, {record['workers']} workers, "
        f"{record['duration_s']} s of load, case {record['case']}.",
    ]
    if not record["complete"]:
        lines += ["", "**This run did not finish; the report holds what it had.**"]
    if record["reason"]:
        lines += ["", f"Reason: {record['reason']}"]
    lines += ["", "## Counts", "", "| property | count |", "|---|---|"]
    for name, value in record["counts"].items():
        if not isinstance(value, dict):
            lines.append(f"| {name} | {'-' if value is None else value} |")
    lines += ["", "## Faults", ""]
    if record["faults"]:
        lines += [
            "| at (s) | fault | for (s) | side | targets | effect |",
            "|---|---|---|---|---|---|",
        ]
        for w in record["faults"]:
            targets = ", ".join(w.get("targets", [])) or "-"
            lines.append(
                f"| {w['at_s']} | {w['fault']} | {w['duration_s']} | {w['side']} "
                f"| {targets} | {w.get('effect', '?')} |"
            )
    else:
        lines.append("none")
    lines += ["", "## Anomalies", ""]
    if not record["anomalies"]:
        lines.append("none")
    for anomaly in record["anomalies"]:
        lines += [
            f"### {anomaly['kind']}: {anomaly['key']}",
            "",
            anomaly.get("detail") or "",
            "",
            "```",
            anomaly["story"],
            "```",
            "",
        ]
    lines += ["", "![timeline](timeline.png)", ""]
    return "\n".join(lines)


def summary(result: RunResult) -> str:
    """A readable story of a run's anomalies, for an assertion message."""
    verdict = result.verdict
    head = (
        f"{result.scenario} against {result.adapter} (seed {result.seed}): "
        f"valid={verdict.valid}"
    )
    lines = [head]
    if verdict.reason:
        lines.append(f"reason: {verdict.reason}")
    violations = verdict.violations
    if violations:
        kinds: dict[str, int] = {}
        for anomaly in violations:
            kinds[anomaly.kind] = kinds.get(anomaly.kind, 0) + 1
        lines.append(
            "anomalies: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        )
        for anomaly in violations[:STORIES_IN_SUMMARY]:
            lines += [f"--- {anomaly.kind}: {anomaly.key} ({anomaly.detail})",
                      anomaly.story]
        if len(violations) > STORIES_IN_SUMMARY:
            lines.append(f"... and {len(violations) - STORIES_IN_SUMMARY} more")
    lines.append(f"report: {result.report_dir / 'report.md'}")
    return "\n".join(lines)


def load_results(run_dir: Path) -> dict[str, Any]:
    """Read results.json of a recorded run; ReportError when it is unusable."""
    path = Path(run_dir) / "results.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(
            f"no results.json in {str(run_dir)!r}; give the folder of one run, "
            "e.g. reports/<run-id>"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise ReportError(
            f"{str(path)!r} is truncated or not JSON; run the scenario again "
            "to record a whole one"
        ) from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else None
        raise ReportError(
            f"{str(path)!r} has schema {found!r}, this version reads {SCHEMA}; "
            "check it with the queue-chaos version that wrote it"
        )
    return record


__all__ = ["load_results", "markdown", "new_run_dir", "summary", "write"]
