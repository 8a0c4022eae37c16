"""Time the state machine: its ci profile on refqueue, and hunts for broken variants."""

# Usage (one cluster for all runs, reports under /tmp):
#   .venv/bin/python benchmarks/stateful_bench.py ci [--runs 3]
#   .venv/bin/python benchmarks/stateful_bench.py hunt [--runs 3] [--derandomize]
#       [--max-examples N]
#       [--mutants ack_before_work,attempts_on_exception_only,no_lease_expiry]
# `hunt` uses the settings and shrink budget of tests/test_stateful.py, with a
# random search unless --derandomize (the tests' own choice). Each run prints
# one JSON line; the last lines give the median of each figure.

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import settings

from harness import postgres, stateful
from harness.network import Network

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ("ack_before_work", "attempts_on_exception_only", "no_lease_expiry")


def hunting_settings() -> tuple[settings, float, dict[str, tuple[str, ...]]]:
    """HUNT, HUNT_SHRINK_BUDGET_S and each hunt's behaviours, of test_stateful.py."""
    spec = importlib.util.spec_from_file_location(
        "test_stateful", ROOT / "tests" / "test_stateful.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    behaviours = {mutant: hunted[-1] for mutant, *hunted in module.HUNTS}
    return module.HUNT, module.HUNT_SHRINK_BUDGET_S, behaviours


def run_ci(server, network, reports_dir: Path) -> dict:
    queue_machine = stateful.machine(
        "refqueue", server, network=network, reports_dir=reports_dir
    )
    started_s = time.monotonic()
    try:
        stateful.run_machine(queue_machine, settings=stateful.profile("ci"))
        outcome = "passed"
    except (AssertionError, stateful.FailureNotReproduced) as exc:
        outcome = f"failed: {str(exc).splitlines()[0]}"
    return {
        "bench": "ci", "outcome": outcome,
        "seconds": round(time.monotonic() - started_s, 1),
        "programs_played": len(queue_machine.setup.outcomes),
    }


def run_hunt(
    server, mutant: str, hunt: settings, budget_s: float, tmp: Path,
    behaviours: tuple[str, ...],
) -> dict:
    queue_machine = stateful.machine(
        f"refqueue:{mutant}", server, reports_dir=tmp, faults=("workers",),
        behaviours=behaviours,
    )
    setup = queue_machine.setup
    started_s = time.monotonic()
    record = {"bench": "hunt", "mutant": mutant}
    try:
        stateful.run_machine(queue_machine, settings=hunt, shrink_budget_s=budget_s)
        record["outcome"] = "not found"
    except stateful.QueueViolation as exc:
        record.update(outcome="found", kinds=exc.kinds, steps=len(exc.steps),
                      program=exc.steps)
    except (AssertionError, stateful.FailureNotReproduced) as exc:
        record["outcome"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    record["seconds"] = round(time.monotonic() - started_s, 1)
    if setup.first_failure_s is not None:
        record["find_s"] = round(setup.first_failure_s - started_s, 1)
    record["programs_played"] = len(setup.outcomes)
    record["shrink_cut"] = setup.shrink_cut
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bench", choices=("ci", "hunt"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--derandomize", action="store_true")
    parser.add_argument(
        "--max-examples", type=int, default=None,
        help="programs a hunt may try before giving up (default: the tests')",
    )
    parser.add_argument("--mutants", default=",".join(MUTANTS))
    args = parser.parse_args()

    os.environ.pop(stateful.PROFILE_ENV, None)
    tmp = Path(tempfile.mkdtemp(prefix="stateful-bench-"))
    server = postgres.server_from_env(None, None)
    network = Network.start(server, seed=0) if args.bench == "ci" else None
    records = []
    try:
        if args.bench == "ci":
            for _ in range(args.runs):
                records.append(run_ci(server, network, tmp))
                print(json.dumps(records[-1]), flush=True)
        else:
            hunt, budget_s, behaviours = hunting_settings()
            hunt = settings(hunt, derandomize=args.derandomize)
            if args.max_examples:
                hunt = settings(hunt, max_examples=args.max_examples)
            for mutant in args.mutants.split(","):
                for _ in range(args.runs):
                    records.append(run_hunt(
                        server, mutant, hunt, budget_s, tmp,
                        behaviours.get(mutant, stateful.BEHAVIOURS),
                    ))
                    print(json.dumps(records[-1]), flush=True)
    finally:
        if network is not None:
            network.close()
        server.close()

    print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record.get("mutant", "ci"), []).append(record)
    for name, runs in groups.items():
        summary = {"median_s": statistics.median(r["seconds"] for r in runs)}
        finds = [r["find_s"] for r in runs if "find_s" in r]
        if finds:
            summary["median_find_s"] = statistics.median(finds)
        steps = [r["steps"] for r in runs if "steps" in r]
        if steps:
            summary["shrunk_steps"] = steps
        summary["outcomes"] = [r["outcome"] for r in runs]
        print(json.dumps({"summary": name, **summary}))


if __name__ == "__main__":
    main()
