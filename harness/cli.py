"""The `queue-chaos` command line.

Exit status: 0 valid, 1 invalid, 3 unknown, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from harness import __version__
from harness.errors import QueueChaosError, UsageError

EXIT_VALID, EXIT_INVALID, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3


def _exit_for(valid: object) -> int:
    return {True: EXIT_VALID, False: EXIT_INVALID}.get(valid, EXIT_UNKNOWN)


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seed {text!r} is not a whole number; give e.g. --seed 42"
        ) from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"seed {seed} is negative; give one >= 0")
    return seed


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite number of seconds > 0"
        )
    return value


def cmd_scenarios(args: argparse.Namespace) -> int:
    from harness.scenarios import CATALOGUE

    if args.json:
        print(json.dumps([
            {"name": s.name, "case": s.case, "description": s.description,
             "needs_server": s.needs_server, "needs_network": s.needs_network}
            for s in CATALOGUE
        ], indent=2))
        return 0
    width = max(len(s.name) for s in CATALOGUE)
    for s in CATALOGUE:
        print(f"{s.name:<{width}}  {s.case:<6} {s.description}")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    from harness.compare import adapter_rows

    rows = adapter_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "available" if r["available"] else f"unavailable: {r['reason']}"
        if r.get("env"):
            state += f" ({r['env']})"
        print(f"{r['name']:<{width}}  {r['library']} {r['version']}  {state}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness import postgres
    from harness.adapters import get_adapter
    from harness.runner import run_scenario
    from harness.scenarios import get_scenario

    scenario = get_scenario(args.scenario)
    adapter = get_adapter(args.adapter)
    reports = Path(args.reports)
    _check_writable(reports)
    server = postgres.server_from_env(args.pg_dsn, args.pg_bindir)
    network = None
    try:
        if scenario.needs_network:
            from harness.network import Network

            network = Network.start(server, seed=args.seed or 0)
        with _Progress(args.quiet) as progress:
            result = run_scenario(
                scenario, adapter=adapter, server=server, seed=args.seed,
                reports_dir=reports, workers=args.workers,
                duration_s=args.duration, progress=progress, network=network,
            )
    finally:
        if network is not None:
            network.close()
        server.close()
    print(result.summary())
    return _exit_for(result.verdict.valid)


def _check_writable(folder: Path) -> None:
    if not str(folder).strip() or str(folder) == ".":
        raise UsageError(
            f"reports folder {str(folder)!r} is empty or the current folder; "
            "give one such as --reports reports"
        )
    # Checked without creating anything: a run refused later leaves no folder.
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = f"{str(existing)!r} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{str(existing)!r} is not writable"
    else:
        return
    raise UsageError(
        f"reports folder {str(folder)!r} cannot be written ({reason}); "
        "choose another with --reports"
    )


class _Progress:
    """A live line of what the run is doing, on a terminal; nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._status = None

    def __enter__(self) -> _Progress:
        if not self.quiet:
            from rich.console import Console

            console = Console(stderr=True)
            self._status = console.status("setting up")
            self._status.__enter__()
            self._console = console
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def __call__(self, phase: str, info: dict) -> None:
        if self._status is None:
            return
        if phase == "setup":
            self._console.print(f"report: {info['report_dir']}", soft_wrap=True)
        elif phase == "enqueued":
            self._status.update(f"load: {info['index']} jobs enqueued")
        elif phase == "draining":
            self._status.update(f"drain: {info['pending']} jobs not finished")
        else:
            self._status.update(phase)


def cmd_check(args: argparse.Namespace) -> int:
    from harness.adapters.base import Semantics
    from harness.checker import JobState, check
    from harness.history import History
    from harness.report import load_results

    run_dir = Path(args.run_dir)
    if run_dir.is_file():
        raise UsageError(
            f"{str(run_dir)!r} is a file; give the folder of one run, "
            "e.g. reports/<run-id>"
        )
    record = load_results(run_dir)
    history_path = run_dir / "history.jsonl"
    if not history_path.exists():
        raise UsageError(f"no history.jsonl in {str(run_dir)!r}; it cannot be checked")
    history = History.load(history_path)
    final_path = run_dir / "final.json"
    final = None
    if final_path.exists():
        try:
            recorded = json.loads(final_path.read_text())
            final = {key: JobState(**state) for key, state in recorded.items()}
        except (ValueError, TypeError, AttributeError):
            raise UsageError(
                f"{str(final_path)!r} is truncated or not a final state; run "
                "the scenario again to record a whole one"
            ) from None
    verdict = check(
        history.ops(), final, Semantics(**record["semantics"]),
        drained=record.get("judged_liveness", False),
        # A history cut short before the runner's last phase cannot judge
        # liveness: the verdict is then unknown, never blamed on the queue.
        complete=history.complete and record.get("complete", False) and any(
            op["f"] == "phase" and op.get("phase") == "check"
            for op in history.ops()
        ),
    )
    out = verdict.to_dict()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        kinds = sorted({a.kind for a in verdict.violations})
        print(f"{run_dir}: valid={verdict.valid}"
              + (f" ({', '.join(kinds)})" if kinds else "")
              + (f" reason: {verdict.reason}" if verdict.reason else ""))
    return _exit_for(verdict.valid)


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_bench

    _check_writable(Path(args.reports))
    say = (lambda text: None) if args.json else (
        lambda text: print(f"bench: {text}", file=sys.stderr))
    record, out_dir = run_bench(
        seconds=args.seconds, rounds=args.rounds, adapters=args.adapter,
        jobs=args.jobs, suite=not args.no_suite, reports_dir=Path(args.reports),
        say=say,
    )
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print((out_dir / "bench.md").read_text())
    print(f"report: {out_dir}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """Says what is wrong with the command line in one line, and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="queue-chaos",
        description="Fault-injection harness for PostgreSQL job queues.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what the harness does to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("scenarios", help="list the scenarios")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_scenarios)

    p = sub.add_parser("adapters", help="list the adapters and their availability")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_adapters)

    p = sub.add_parser("run", help="run one scenario against one adapter")
    p.add_argument("scenario", help="a name from `queue-chaos scenarios`")
    p.add_argument("--adapter", default="refqueue",
                   help="queue under test (default: refqueue)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of the load and the fault schedule (default: random)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="worker processes (default: the scenario's)")
    p.add_argument("--duration", type=_positive_float, default=None,
                   help="seconds of load (default: the scenario's)")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.add_argument("--pg-dsn", default=None,
                   help="an existing server instead of an ephemeral cluster")
    p.add_argument("--pg-bindir", default=None, help="folder of Postgres binaries")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("bench", help="measure the queues, the proxy and the harness")
    p.add_argument("--json", action="store_true", help="print bench.json")
    p.add_argument("--seconds", type=_positive_float, default=3.0,
                   help="length of each pgbench round (default 3)")
    p.add_argument("--rounds", type=_positive_int, default=3,
                   help="rounds of each figure (default 3)")
    p.add_argument("--jobs", type=_positive_int, default=1000,
                   help="jobs per queue round (default 1000)")
    p.add_argument("--adapter", action="append", default=None,
                   help="also measure this adapter (repeatable)")
    p.add_argument("--no-suite", action="store_true",
                   help="skip timing the scenario suite (the longest part)")
    p.add_argument("--reports", default="reports", help="reports folder")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("check", help="check a recorded run again, offline")
    p.add_argument("run_dir", help="a folder reports/<run-id>")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_check)

    from harness.compare import add_commands

    add_commands(sub)

    from harness.mutants import add_commands as add_mutants_command

    add_mutants_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # Plotting and terminal libraries ask for a runtime folder that CI
    # machines and containers often lack; nothing here needs one.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.handler(args)
    except QueueChaosError as exc:
        print(f"queue-chaos: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("queue-chaos: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
