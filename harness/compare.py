"""Side by side: the same scenarios against several adapters, and a scorecard.

`compare` checks each adapter first (its library's environment can be made,
its worker starts and runs one job), then plays every scenario against every
adapter that passed that check with `harness.parallel.run_many`, and writes
`reports/compare-<id>/scorecard.md` and `scorecard.json`: scenarios as rows,
adapters as columns, each cell passed, failed (with the anomaly kinds and
counts) or unknown (with the reason). An adapter that cannot run here makes
its cells unknown with the reason; the rest of the comparison goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from harness import report
from harness.errors import QueueChaosError

__all__ = ["Cell", "Column", "compare", "preflight"]

log = logging.getLogger("queue_chaos.compare")

PREFLIGHT_TIMEOUT_S = 60.0
STORY_KEYS = 3

Say = Callable[[str], None]


@dataclass
class Column:
    """One adapter of the comparison: what it is and whether it could run."""

    spec: str
    name: str
    library: str = ""
    version: str = ""
    semantics: dict[str, Any] = field(default_factory=dict)
    configured: list[str] = field(default_factory=list)
    unavailable: str | None = None
    preflight_s: float | None = None

    @property
    def title(self) -> str:
        if "==" in self.name:
            return self.name
        return f"{self.name} {self.version}".strip()


@dataclass
class Cell:
    """One scenario against one adapter: passed, failed or unknown."""

    scenario: str
    adapter: str
    result: str
    anomalies: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    report: str | None = None
    keys: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self, base: Path) -> str:
        """The cell as scorecard.md shows it."""
        link = f" ([report]({self._relative(base)}))" if self.report else ""
        if self.result == "passed":
            return f"passed{link}"
        if self.result == "failed":
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.anomalies.items()))
            return f"**failed**: {kinds or self.reason}{link}"
        return f"unknown: {_one_line(self.reason or 'no verdict')}{link}"

    def _relative(self, base: Path) -> str:
        path = Path(self.report)
        with contextlib.suppress(ValueError):
            return str(path.relative_to(base))
        return str(path)


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.strip().split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _column(spec: str, say: Say) -> tuple[Column, Any]:
    """The column of an adapter spec, and the adapter (None when unknown)."""
    from harness.adapters import get_adapter

    try:
        adapter = get_adapter(spec)
    except QueueChaosError as exc:
        column = Column(spec, spec, unavailable=str(exc))
        say(f"adapter {spec}: unavailable: {exc}")
        return column, None
    column = Column(
        spec, adapter.name, adapter.library, adapter.version(),
        dict(adapter.semantics.__dict__), list(getattr(adapter, "configured", ())),
    )
    reason = adapter.unavailable()
    if reason is None and hasattr(adapter, "ensure_env"):
        try:
            adapter.ensure_env()
        except QueueChaosError as exc:
            reason = str(exc).removeprefix(f"adapter {adapter.spec.adapter}: ")
    if reason:
        column.unavailable = reason
        say(f"adapter {adapter.name}: unavailable: {reason}")
    return column, adapter


def preflight(
    adapter: Any, server: Any, folder: Path, *, timeout_s: float = PREFLIGHT_TIMEOUT_S
) -> str | None:
    """Start one worker and run one `ok` job through it; why not, or None.

    Catches what a scenario would misreport as stuck jobs: a library that
    does not install its schema, a worker that never starts or never runs.
    """
    from harness.history import History
    from harness.workers import WorkerPool

    database = server.create_database()
    pool = None
    try:
        adapter.install(database.dsn)
        with psycopg.connect(database.dsn) as conn:
            adapter.enqueue(conn, "preflight", {"key": "preflight", "behaviour": "ok"})
            conn.commit()
        folder.mkdir(parents=True, exist_ok=True)
        pool = WorkerPool(
            lambda name: adapter.worker_command(database.dsn, name),
            size=1, history=History(folder / "history.jsonl"),
            env={"QUEUE_CHAOS_LEDGER": str(folder / "ledger")}, log_dir=folder,
        )
        pool.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pool.supervise()
            state = adapter.snapshot(database.dsn, ["preflight"])["preflight"]
            if state.state == "done":
                return None
            time.sleep(0.2)
        return (
            f"its worker did not run a job within {timeout_s:g} s "
            f"(last worker output: {_tail(folder)})"
        )
    except QueueChaosError as exc:
        return str(exc).removeprefix(f"adapter {adapter.name}: ")
    except psycopg.Error as exc:
        return f"preflight failed: {type(exc).__name__}: {_one_line(str(exc))}"
    finally:
        if pool is not None:
            pool.stop(grace_s=5)
        with contextlib.suppress(Exception):
            server.drop_database(database.name)


def _tail(folder: Path) -> str:
    lines = []
    for path in sorted(folder.glob("worker-*.log")):
        lines += [line for line in path.read_text(errors="replace").splitlines()
                  if line.strip()]
    return _one_line(lines[-1]) if lines else "none"


def compare(
    adapters: list[str],
    scenarios: list[str] | None = None,
    *,
    reports_dir: Path | str = "reports",
    seed: int | None = None,
    processes: int | None = None,
    pg_dsn: str | None = None,
    pg_bindir: str | None = None,
    preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S,
    say: Say = print,
) -> Path:
    """Run the scenarios against each adapter; the folder of the scorecard."""
    from harness import postgres
    from harness.parallel import Task, run_many
    from harness.scenarios import get_scenario, names

    started = time.monotonic()
    scenario_names = list(dict.fromkeys(scenarios or names()))
    for name in scenario_names:
        get_scenario(name)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = report.unique_dir(reports_dir, f"compare-{stamp}-")
    say(f"comparison: {folder}")

    columns: list[Column] = []
    resolved: list[tuple[Column, Any]] = []
    for spec in dict.fromkeys(adapters):
        column, adapter = _column(spec, say)
        columns.append(column)
        resolved.append((column, adapter))

    ready = [(c, a) for c, a in resolved if c.unavailable is None]
    if ready:
        server = postgres.server_from_env(pg_dsn, pg_bindir)
        try:
            for column, adapter in ready:
                t = time.monotonic()
                reason = preflight(
                    adapter, server, folder / "preflight" / _slug(column.name),
                    timeout_s=preflight_timeout_s,
                )
                column.preflight_s = round(time.monotonic() - t, 2)
                if reason:
                    column.unavailable = reason
                    say(f"adapter {column.name}: unavailable: {reason}")
        finally:
            server.close()

    cells: dict[tuple[str, str], Cell] = {}
    tasks = []
    for name in scenario_names:
        scenario = get_scenario(name)
        for column, adapter in resolved:
            if column.unavailable is not None:
                cells[name, column.name] = Cell(
                    name, column.name, "unknown",
                    reason=f"adapter unavailable: {column.unavailable}",
                )
            elif scenario.transactional and (
                adapter.with_transactional_completion() is None
            ):
                cells[name, column.name] = _missing_feature(folder, name, column)
            else:
                tasks.append(Task(name, column.spec, seed, group=column.name))
    by_spec = {c.spec: c for c in columns}
    if tasks:
        say(f"running {len(tasks)} scenario runs")
        outcomes = run_many(
            tasks, reports_dir=str(folder / "runs"), processes=processes,
            pg_dsn=pg_dsn, pg_bindir=pg_bindir,
            done=lambda outcome: _said(outcome, by_spec, say),
        )
        for outcome in outcomes:
            column = by_spec[outcome.task.adapter]
            cells[outcome.task.scenario, column.name] = _cell(outcome, column)

    took_s = time.monotonic() - started
    _write(folder, scenario_names, columns, cells, seed, took_s)
    say(f"scorecard: {folder / 'scorecard.md'}")
    return folder


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def _said(outcome: Any, by_spec: dict[str, Column], say: Say) -> bool:
    column = by_spec[outcome.task.adapter]
    verdict = {True: "passed", False: "failed"}.get(outcome.valid, "unknown")
    say(f"{outcome.task.scenario} against {column.name}: {verdict} "
        f"({outcome.seconds:.0f} s)")
    return False


def _missing_feature(folder: Path, scenario: str, column: Column) -> Cell:
    """A failed cell for a scenario whose required feature the queue lacks."""
    reason = (
        f"{scenario} needs transactional completion (the job's writes "
        f"committed with its completion), which {column.title} does not offer"
    )
    run_dir = folder / "runs" / f"{_slug(scenario)}-{_slug(column.name)}-missing"
    run_dir.mkdir(parents=True, exist_ok=True)
    report.write_atomic(
        run_dir / "report.md",
        f"# {scenario} against {column.name}: INVALID\n\n"
        f"Not played: {reason}. A queue without this feature cannot give the "
        "guarantee the scenario checks, so the scenario fails with this "
        "reason; no job was run.\n",
    )
    return Cell(scenario, column.name, "failed", reason=reason,
                report=str(run_dir / "report.md"))


def _cell(outcome: Any, column: Column) -> Cell:
    record: dict[str, Any] = {}
    report_md = None
    if outcome.report_dir:
        report_md = str(Path(outcome.report_dir) / "report.md")
        with contextlib.suppress(QueueChaosError):
            record = report.load_results(Path(outcome.report_dir))
    keys: dict[str, list[str]] = {}
    for anomaly in record.get("anomalies", []):
        if anomaly["kind"] in ("recovered", "duplicated"):
            continue
        keys.setdefault(anomaly["kind"], []).append(anomaly["key"])
    result = {True: "passed", False: "failed"}.get(outcome.valid, "unknown")
    reason = outcome.error or record.get("reason")
    if result == "unknown" and outcome.cancelled:
        reason = "cancelled"
    if result == "unknown" and reason:
        reason = reason.strip().splitlines()[0]
        waiting = _waiting(outcome.report_dir)
        if waiting:
            reason += f"; {waiting}"
    return Cell(
        outcome.task.scenario, column.name, result, dict(outcome.anomalies),
        reason, report_md if Path(report_md or "/nonexistent").exists() else None,
        {k: v[:STORY_KEYS] for k, v in keys.items()}, round(outcome.seconds, 1),
    )


def _waiting(report_dir: str | None) -> str | None:
    """How many jobs a run that did not drain left waiting, from final.json."""
    if not report_dir:
        return None
    try:
        final = json.loads((Path(report_dir) / "final.json").read_text())
    except (OSError, ValueError):
        return None
    states: dict[str, int] = {}
    for job in final.values():
        if job.get("state") in ("pending", "running"):
            states[job["state"]] = states.get(job["state"], 0) + 1
    if not states:
        return "every job was terminal once the workers had stopped"
    shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"left {shown} in the final snapshot"


def _write(
    folder: Path,
    scenarios: list[str],
    columns: list[Column],
    cells: dict[tuple[str, str], Cell],
    seed: int,
    took_s: float,
) -> None:
    record = {
        "schema": 1,
        "seed": seed,
        "took_s": round(took_s, 1),
        "scenarios": scenarios,
        "adapters": [asdict(c) for c in columns],
        "cells": [asdict(cells[s, c.name]) for s in scenarios for c in columns],
    }
    report.write_atomic(folder / "scorecard.json", json.dumps(record, indent=2))
    report.write_atomic(folder / "scorecard.md", _markdown(
        folder, scenarios, columns, cells, seed, took_s,
    ))


def _markdown(
    folder: Path,
    scenarios: list[str],
    columns: list[Column],
    cells: dict[tuple[str, str], Cell],
    seed: int,
    took_s: float,
) -> str:
    lines = [
        f"# Scorecard {folder.name}",
        "",
        f"{len(scenarios)} scenarios against {len(columns)} adapters, seed "
        f"{seed}, {took_s / 60:.1f} min. Each cell links the run's report, "
        "which tells the story of every offending job.",
        "",
        "| scenario | " + " | ".join(c.title for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in scenarios:
        row = [cells[name, c.name].text(folder) for c in columns]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "## What each adapter got wrong", ""]
    for column in columns:
        lines += [f"### {column.title}", ""]
        if column.unavailable:
            lines += [f"Unavailable here: {column.unavailable}", ""]
            continue
        own = [cells[s, column.name] for s in scenarios]
        failed = [c for c in own if c.result == "failed"]
        unknown = [c for c in own if c.result == "unknown"]
        passed = sum(1 for c in own if c.result == "passed")
        summary = f"Passed {passed} of {len(own)} scenarios"
        if failed:
            summary += "; failed " + ", ".join(c.scenario for c in failed)
        if unknown:
            summary += "; unknown " + ", ".join(c.scenario for c in unknown)
        lines += [summary + ".", ""]
        for cell in failed:
            lines.append(f"- {cell.scenario}: " + _wrong(cell, folder))
        for cell in unknown:
            lines.append(f"- {cell.scenario}: unknown, {_one_line(cell.reason or '')}")
        if failed or unknown:
            lines.append("")
        if column.configured:
            lines += ["Configured:", ""]
            lines += [f"- {line}" for line in column.configured]
            lines.append("")
        if column.semantics:
            shown = ", ".join(f"{k}={v}" for k, v in column.semantics.items())
            lines += [f"Semantics: {shown}.", ""]
    return "\n".join(lines)


def _wrong(cell: Cell, folder: Path) -> str:
    link = f" [report]({cell._relative(folder)})" if cell.report else ""
    if not cell.anomalies:
        return f"{cell.reason}.{link}"
    parts = []
    for kind, count in sorted(cell.anomalies.items()):
        keys = ", ".join(cell.keys.get(kind, []))
        parts.append(f"{kind} {count}" + (f" (e.g. {keys})" if keys else ""))
    return "; ".join(parts) + "." + link


def adapter_rows() -> list[dict[str, Any]]:
    """Every adapter, its library version and whether it can run here, and why not.

    For a library adapter, `env` says whether its environment exists yet
    (`queue-chaos env create NAME` makes it; a run makes it on demand).
    """
    from harness.adapters import get_adapter, libraries, names

    rows = []
    for name in names():
        adapter = get_adapter(name)
        reason = adapter.unavailable()
        row = {"name": name, "library": adapter.library,
               "version": adapter.version(), "available": reason is None,
               "reason": reason}
        if name in libraries():
            row["env"] = "env ready" if adapter.env_ready() else (
                f"env not created yet: queue-chaos env create {name}"
            )
        rows.append(row)
    return rows


def add_commands(sub: Any) -> None:
    """Register `env create` and `compare` on the command line's subparsers."""
    p = sub.add_parser("env", help="virtual environments of queue libraries")
    env_sub = p.add_subparsers(dest="env_command", metavar="ACTION", required=True)
    q = env_sub.add_parser("create", help="create an adapter's environment")
    q.add_argument("adapter", nargs="+",
                   help="an adapter name, optionally NAME==VERSION")
    q.set_defaults(handler=_cmd_env_create)

    p = sub.add_parser("compare", help="run scenarios against several adapters "
                       "and write a scorecard")
    p.add_argument("--adapter", action="append", required=True,
                   help="an adapter to compare (repeat; NAME==VERSION allowed)")
    p.add_argument("--scenario", action="append", default=None,
                   help="a scenario to run (repeat; default: all)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every run (default: random, printed)")
    p.add_argument("--processes", type=int, default=None,
                   help="runs played at once (default: one per core)")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.add_argument("--pg-dsn", default=None,
                   help="an existing server instead of ephemeral clusters")
    p.add_argument("--pg-bindir", default=None, help="folder of Postgres binaries")
    p.add_argument("--preflight-timeout", type=float, default=PREFLIGHT_TIMEOUT_S,
                   help="seconds an adapter's worker has to run its first job")
    p.set_defaults(handler=_cmd_compare)


def _cmd_env_create(args: Any) -> int:
    import sys

    from harness.adapters import get_adapter

    failed = 0
    for spec in args.adapter:
        try:
            adapter = get_adapter(spec)
            if not hasattr(adapter, "ensure_env"):
                print(f"{adapter.name}: runs in the harness's own environment")
                continue
            reason = adapter.unavailable()
            if reason:
                raise QueueChaosError(f"adapter {adapter.name}: {reason}")
            t = time.monotonic()
            python = adapter.ensure_env()
            print(f"{adapter.name}: {adapter.library} {adapter.version()} ready "
                  f"in {python.parent.parent} ({time.monotonic() - t:.1f} s)")
        except QueueChaosError as exc:
            print(f"queue-chaos: {exc}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _cmd_compare(args: Any) -> int:
    import sys

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    folder = compare(
        args.adapter, args.scenario, reports_dir=args.reports, seed=args.seed,
        processes=args.processes, pg_dsn=args.pg_dsn, pg_bindir=args.pg_bindir,
        preflight_timeout_s=args.preflight_timeout, say=say,
    )
    print(folder / "scorecard.md")
    return 0
