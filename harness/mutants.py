"""`queue-chaos mutants`: the default scenario suite against every refqueue mutant.

Each mutant of `refqueue.mutants` is one named bug; the suite must catch every
one (DESIGN: "Mutants prove the harness works"). A mutant is *caught* when a
scenario run against `refqueue:NAME` ends with verdict False; an unknown
verdict is never a catch. Runs are played by `harness.parallel.run_many`,
one cluster per process. Each mutant's scenarios are ordered so that the one
known to catch it (`CATCHERS`) runs first, then those of its failure case,
then the rest; with `fast`, a mutant's remaining runs are cancelled at its
first catch. Without `fast` (and without `only`) the reference queue runs the
same suite as a control: a run of it that fails is a false alarm.

The time to first catch of a mutant is the run time of its scenarios, in
their order, up to and including the first that caught it: what catching it
costs when its runs are played one after another.

Results go to `reports/mutants-<id>/mutants.json` and `mutants.md`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import report
from harness.errors import UsageError

__all__ = [
    "ALSO_CAUGHT",
    "CATCHERS",
    "Catch",
    "MutantResult",
    "add_commands",
    "catches",
    "run_mutants",
    "scenario_order",
]

REFERENCE = "refqueue"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Catch:
    """A scenario known to give verdict False, and the anomaly kinds it shows."""

    scenario: str
    kinds: tuple[str, ...]


#: The scenario that catches each mutant first, with the anomaly kinds it shows.
#: `queue-chaos mutants` checks every entry; tests/test_mutants.py plays them.
CATCHERS: dict[str, Catch] = {
    "ack_before_work": Catch("f3-worker-killed", ("lost", "state_mismatch")),
    "async_commit_enqueue": Catch("f6-database-faults", ("lost",)),
    "attempts_on_exception_only": Catch("f4-crashing-jobs", ("state_mismatch",)),
    "claim_without_lock": Catch("f2-poison-jobs", ("retry_exceeded",)),
    "client_clock_lease": Catch("f6-clock-skew", ("stuck",)),
    "dead_letter_deletes": Catch("f2-poison-jobs", ("lost",)),
    "delete_on_claim": Catch("f3-worker-killed", ("lost",)),
    "enqueue_commits": Catch("f6-net-partition-clients", ("unexpected",)),
    "gives_up_one_early": Catch("f1-transient-failures", ("gave_up_early",)),
    "listen_without_poll": Catch("f1-transient-failures", ("stuck",)),
    "no_heartbeat": Catch("f5-hung-jobs-and-paused-workers", ("concurrent",)),
    "no_job_timeout": Catch("f5-hung-jobs-and-paused-workers", ("stuck",)),
    "no_lease_expiry": Catch("f3-worker-killed", ("stuck",)),
    "no_reconnect": Catch("f6-net-partition-workers", ("stuck",)),
    "no_retry_limit": Catch("f2-poison-jobs", ("retry_exceeded",)),
    "retry_limit_off_by_one": Catch("f2-poison-jobs", ("retry_exceeded",)),
    "unfenced_completion": Catch("f5-stalled-worker", ("effects",)),
}

#: Further (mutant, catch) pairs, so that every scenario of the catalogue is
#: shown able to fail against some mutant.
ALSO_CAUGHT: tuple[tuple[str, Catch], ...] = (
    ("delete_on_claim", Catch("f6-net-latency", ("lost",))),
    ("no_reconnect", Catch("f6-net-resets", ("stuck",))),
    ("no_reconnect", Catch("f6-net-blackhole", ("stuck",))),
    ("delete_on_claim", Catch("mixed-chaos", ("lost",))),
)


def catches() -> list[tuple[str, Catch]]:
    """Every known (mutant, catch) pair: `CATCHERS`, then `ALSO_CAUGHT`."""
    return [*CATCHERS.items(), *ALSO_CAUGHT]


def scenario_order(mutant: str) -> list[str]:
    """The scenarios to play against a mutant, the likely catcher first.

    Its catcher from `CATCHERS`, then the other scenarios of its failure case,
    then the rest, each group in catalogue order.
    """
    from harness.scenarios import CATALOGUE
    from refqueue.mutants import MUTANTS

    case = MUTANTS[mutant].failure_case
    first = CATCHERS[mutant].scenario if mutant in CATCHERS else None
    ordered = [first] if first else []
    ordered += [s.name for s in CATALOGUE if s.case == case and s.name != first]
    ordered += [s.name for s in CATALOGUE if s.name not in ordered]
    return ordered


@dataclass
class MutantResult:
    """What the suite found for one mutant (or for the reference queue)."""

    name: str
    case: str
    description: str
    caught: bool = False
    #: the scenarios that caught it, in the order they were played
    scenarios: list[str] = field(default_factory=list)
    #: per catching scenario, the anomaly kinds shown and how many jobs show each
    anomalies: dict[str, dict[str, int]] = field(default_factory=dict)
    #: time to first catch, seconds; None when not caught
    seconds: float | None = None
    #: the catcher expected by CATCHERS, and whether it caught with its kinds
    expected: str | None = None
    expected_confirmed: bool | None = None
    unknown: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "case": self.case,
            "description": self.description,
            "caught": self.caught,
            "scenarios": self.scenarios,
            "anomalies": self.anomalies,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
            "expected": self.expected,
            "expected_confirmed": self.expected_confirmed,
            "unknown": self.unknown,
            "runs": self.runs,
        }


def run_mutants(
    *,
    only: str | None = None,
    fast: bool = False,
    reports_dir: Path | str = "reports",
    seed: int | None = None,
    processes: int | None = None,
    pg_dsn: str | None = None,
    pg_bindir: str | None = None,
    say: Say = lambda line: None,
) -> tuple[dict[str, Any], Path]:
    """Play the suite against the mutants; the record and its folder.

    Raises `UsageError` for an `only` that names no mutant.
    """
    from harness.parallel import Outcome, Task, run_many
    from harness.scenarios import CATALOGUE
    from refqueue.mutants import MUTANTS

    if only is not None and only not in MUTANTS:
        raise UsageError(
            f"unknown mutant {only!r} for --only; choose one of "
            + ", ".join(sorted(MUTANTS))
        )
    names = [only] if only else sorted(MUTANTS)
    with_reference = only is None and not fast
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = report.unique_dir(reports_dir, f"mutants-{stamp}-")
    say(f"mutants: {len(names)} against {len(CATALOGUE)} scenarios, seed {seed}, "
        f"report {folder}")

    # Rank by rank: every mutant's likely catcher before anyone's second choice,
    # so that with fast most groups are cancelled before their later runs start.
    orders = {name: scenario_order(name) for name in names}
    tasks = [
        Task(order[rank], f"refqueue:{name}", seed, group=name)
        for rank in range(len(CATALOGUE))
        for name, order in orders.items()
    ]
    if with_reference:
        tasks += [Task(s.name, REFERENCE, seed) for s in CATALOGUE]

    started = time.monotonic()

    def done(outcome: Outcome) -> bool:
        task = outcome.task
        who = task.group or REFERENCE
        if outcome.valid is False:
            kinds = ", ".join(sorted(outcome.anomalies))
            say(f"{who}: caught by {task.scenario} ({kinds})")
        elif outcome.valid is not True:
            say(f"{who}: {task.scenario} unknown: {_first_line(outcome.error)}")
        return fast and outcome.valid is False

    outcomes = run_many(
        tasks, reports_dir=str(folder), processes=processes, pg_dsn=pg_dsn,
        pg_bindir=pg_bindir, done=done,
    )
    results = [
        _result(name, MUTANTS[name].failure_case, MUTANTS[name].description,
                orders[name], [o for o in outcomes if o.task.group == name])
        for name in names
    ]
    reference = None
    if with_reference:
        reference = _result(
            REFERENCE, "F1-F6", "the reference queue: every run must pass",
            [s.name for s in CATALOGUE],
            [o for o in outcomes if o.task.adapter == REFERENCE],
        )
    caught = sum(1 for r in results if r.caught)
    record = {
        "schema": 1,
        # the share of mutants caught: 1.0 when the harness caught them all
        "score": round(caught / len(results), 3) if results else 0.0,
        "caught": caught,
        "total": len(results),
        "seed": seed,
        "fast": fast,
        "only": only,
        "scenarios": [s.name for s in CATALOGUE],
        "seconds": round(time.monotonic() - started, 1),
        "mutants": [r.to_dict() for r in results],
        "reference": None if reference is None else reference.to_dict(),
        "passed": _passed(results, reference),
    }
    _write(folder, record)
    return record, folder


def _first_line(text: str | None) -> str:
    return (text or "no verdict").strip().splitlines()[0][:160]


def _result(
    name: str, case: str, description: str, order: list[str], outcomes: Iterable[Any]
) -> MutantResult:
    by_scenario = {o.task.scenario: o for o in outcomes}
    result = MutantResult(name, case, description)
    expected = CATCHERS.get(name)
    result.expected = expected.scenario if expected else None
    elapsed_s = 0.0
    for scenario in order:
        outcome = by_scenario.get(scenario)
        if outcome is None:
            continue
        result.runs.append({
            "scenario": scenario,
            "valid": outcome.valid,
            "anomalies": outcome.anomalies,
            "seconds": round(outcome.seconds, 1),
            "report": outcome.report_dir,
            "error": _first_line(outcome.error) if outcome.error else None,
            "cancelled": outcome.cancelled,
        })
        if outcome.cancelled:
            continue
        elapsed_s += outcome.seconds
        if outcome.valid is False:
            if not result.caught:
                result.caught, result.seconds = True, elapsed_s
            result.scenarios.append(scenario)
            result.anomalies[scenario] = dict(sorted(outcome.anomalies.items()))
        elif outcome.valid is not True:
            result.unknown.append(scenario)
    if expected is not None:
        shown = result.anomalies.get(expected.scenario, {})
        result.expected_confirmed = set(expected.kinds) <= set(shown)
    return result


def _passed(results: list[MutantResult], reference: MutantResult | None) -> bool:
    """Every mutant caught, each by its catcher, and no false alarm."""
    return (
        all(r.caught for r in results)
        and all(r.expected_confirmed is not False for r in results)
        and (reference is None or not reference.caught)
    )


def _write(folder: Path, record: dict[str, Any]) -> None:
    from harness.report import write_atomic

    write_atomic(folder / "mutants.json", json.dumps(record, indent=2) + "\n")
    write_atomic(folder / "mutants.md", markdown(record))


def _kinds(entry: dict[str, Any]) -> str:
    kinds = sorted({k for shown in entry["anomalies"].values() for k in shown})
    return ", ".join(kinds)


def _seconds(entry: dict[str, Any]) -> str:
    return "-" if entry["seconds"] is None else f"{entry['seconds']:.1f}"


def _rows(record: dict[str, Any]) -> list[list[str]]:
    rows = []
    entries = list(record["mutants"])
    if record["reference"] is not None:
        entries.append(record["reference"])
    for entry in entries:
        reference = entry["name"] == REFERENCE
        if reference:
            verdict = "FALSE ALARM" if entry["caught"] else "passed"
        else:
            verdict = "caught" if entry["caught"] else "NOT CAUGHT"
        if entry["expected_confirmed"] is False:
            verdict += f" (not by {entry['expected']})"
        if entry["unknown"]:
            verdict += f" ({len(entry['unknown'])} unknown)"
        rows.append([entry["name"], entry["case"], verdict,
                     ", ".join(entry["scenarios"]), _kinds(entry), _seconds(entry)])
    return rows


HEADERS = ["mutant", "case", "verdict", "caught by", "anomaly kinds",
           "first catch (s)"]


def markdown(record: dict[str, Any]) -> str:
    """mutants.md: the score, then one row per mutant."""
    lines = [
        "# Mutation score",
        "",
        f"Score **{record['score']}**: {record['caught']} of {record['total']} "
        f"mutants caught (seed {record['seed']}, "
        f"{'fast: stopped at the first catch' if record['fast'] else 'every run'}"
        f", {record['seconds']:.0f} s).",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(record)]
    lines += ["", "First catch: run time of a mutant's scenarios, in order, up to "
              "and including the first that caught it."]
    return "\n".join(lines) + "\n"


def print_table(record: dict[str, Any]) -> None:
    """The table of `queue-chaos mutants`, on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=(
        f"mutation score {record['score']} "
        f"({record['caught']} of {record['total']} caught)"
    ))
    for header in HEADERS:
        table.add_column(header, justify="right" if "(s)" in header else "left")
    for row in _rows(record):
        style = None if row[2] in ("caught", "passed") else "bold red"
        table.add_row(*row, style=style)
    Console().print(table)


def add_commands(sub: Any) -> None:
    """Register `mutants` on the command line's subparsers."""
    p = sub.add_parser("mutants", help="run the scenario suite against every "
                       "refqueue mutant and print the mutation score")
    p.add_argument("--json", action="store_true", help="print mutants.json")
    p.add_argument("--only", default=None, metavar="NAME",
                   help="only this mutant (`python -m refqueue mutants` lists them)")
    p.add_argument("--fast", action="store_true",
                   help="stop each mutant at its first catch; skip the reference")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every run (default: random, printed)")
    p.add_argument("--processes", type=int, default=None,
                   help="runs played at once (default: one per core)")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.add_argument("--pg-dsn", default=None,
                   help="an existing server instead of ephemeral clusters")
    p.add_argument("--pg-bindir", default=None, help="folder of Postgres binaries")
    p.set_defaults(handler=_cmd_mutants)


def _cmd_mutants(args: Any) -> int:
    import sys

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    record, folder = run_mutants(
        only=args.only, fast=args.fast, reports_dir=args.reports, seed=args.seed,
        processes=args.processes, pg_dsn=args.pg_dsn, pg_bindir=args.pg_bindir,
        say=say,
    )
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print_table(record)
    say(f"report: {folder / 'mutants.md'}")
    return 0 if record["passed"] else 1
