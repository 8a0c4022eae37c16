"""Every refqueue mutant is caught, and every scenario is shown able to fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import cli
from harness.mutants import (
    ALSO_CAUGHT,
    CATCHERS,
    _result,
    catches,
    markdown,
    scenario_order,
)
from harness.parallel import Outcome, Task
from harness.scenarios import CATALOGUE
from refqueue.mutants import MUTANTS

SCENARIO_TESTS = Path(__file__).parent.parent / "scenarios"
CATCH_RUNS = 3


def _pair_id(pair: tuple[str, object]) -> str:
    mutant, catch = pair
    return f"{mutant}-{catch.scenario}"


# The catalogue and its mapping --------------------------------------------------


def test_every_mutant_has_the_scenario_known_to_catch_it():
    assert sorted(CATCHERS) == sorted(MUTANTS)


def test_every_scenario_is_shown_able_to_fail_against_some_mutant():
    shown = {catch.scenario for _, catch in catches()}

    assert shown == {scenario.name for scenario in CATALOGUE}


def test_the_extra_pairs_name_known_mutants_and_add_scenarios():
    primary = {catch.scenario for catch in CATCHERS.values()}

    for mutant, catch in ALSO_CAUGHT:
        assert mutant in MUTANTS
        assert catch.scenario not in primary


def test_each_mutant_plays_its_catcher_first_then_its_case_then_the_rest():
    for mutant, catch in CATCHERS.items():
        order = scenario_order(mutant)
        case = MUTANTS[mutant].failure_case
        same_case = [s.name for s in CATALOGUE if s.case == case]

        assert order[0] == catch.scenario
        assert sorted(order) == sorted(s.name for s in CATALOGUE)
        assert set(order[1 : 1 + len(same_case)]) >= set(same_case) - {order[0]}


def test_every_scenario_is_played_against_the_reference_queue_by_a_scenario_test():
    # scenarios/ runs each named scenario against refqueue (the default
    # adapter) and requires a valid verdict: the reference is caught by none.
    sources = "\n".join(p.read_text() for p in SCENARIO_TESTS.glob("test_*.py"))

    for scenario in CATALOGUE:
        assert re.search(rf'"{re.escape(scenario.name)}"', sources), scenario.name


# Scoring ------------------------------------------------------------------------


def outcome(scenario, valid, seconds, anomalies=None, cancelled=False):
    task = Task(scenario, "refqueue:m", 1, group="m")
    return Outcome(task, valid, anomalies or {}, None, seconds, cancelled=cancelled)


def test_the_first_catch_counts_the_run_time_of_the_scenarios_played_before_it():
    order = ["a", "b", "c", "d"]
    outcomes = [
        outcome("a", True, 10.0),
        outcome("b", "unknown", 5.0),
        outcome("c", False, 2.0, {"lost": 3}),
        outcome("d", "unknown", 0.0, cancelled=True),
    ]

    result = _result("m", "F3", "a bug", order, outcomes)

    assert result.to_dict() == {
        "name": "m",
        "case": "F3",
        "description": "a bug",
        "caught": True,
        "scenarios": ["c"],
        "anomalies": {"c": {"lost": 3}},
        "seconds": 17.0,
        "expected": None,
        "expected_confirmed": None,
        "unknown": ["b"],
        "runs": [
            {"scenario": "a", "valid": True, "anomalies": {}, "seconds": 10.0,
             "report": None, "error": None, "cancelled": False},
            {"scenario": "b", "valid": "unknown", "anomalies": {}, "seconds": 5.0,
             "report": None, "error": None, "cancelled": False},
            {"scenario": "c", "valid": False, "anomalies": {"lost": 3},
             "seconds": 2.0, "report": None, "error": None, "cancelled": False},
            {"scenario": "d", "valid": "unknown", "anomalies": {}, "seconds": 0.0,
             "report": None, "error": None, "cancelled": True},
        ],
    }


def test_an_unknown_verdict_is_never_a_catch():
    result = _result("m", "F1", "a bug", ["a"], [outcome("a", "unknown", 3.0)])

    assert (result.caught, result.scenarios, result.seconds) == (False, [], None)
    assert result.unknown == ["a"]


def test_a_catch_by_another_scenario_does_not_confirm_the_known_catcher():
    catch = CATCHERS["no_retry_limit"]
    outcomes = [
        outcome(catch.scenario, True, 4.0),
        outcome("other", False, 1.0, {"stuck": 1}),
    ]

    result = _result(
        "no_retry_limit", "F2", "a bug", [catch.scenario, "other"], outcomes
    )

    assert result.caught is True
    assert result.expected_confirmed is False
    record = {"score": 1.0, "caught": 1, "total": 1, "seed": 1, "fast": False,
              "seconds": 5.0,
              "mutants": [result.to_dict()], "reference": None}
    assert f"caught (not by {catch.scenario})" in markdown(record)


def test_an_unknown_only_name_is_bad_input(capsys):
    status = cli.main(["mutants", "--only", "no_such_mutant"])

    err = capsys.readouterr().err.strip()
    assert status == cli.EXIT_USAGE
    assert len(err.splitlines()) == 1
    assert "'no_such_mutant'" in err and "choose one of" in err


# Each mutant against its catcher ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("mutant", "catch"), catches(), ids=map(_pair_id, catches()))
def test_the_scenario_catches_the_mutant_with_the_expected_anomalies(
    run_scenario, mutant, catch
):
    # A fault lands at a moment of the real system, not of a script: some
    # mutants show only when a fault meets a job in flight. The gate is that
    # the catcher catches within CATCH_RUNS runs, each with its own seed.
    for _ in range(CATCH_RUNS):
        result = run_scenario(catch.scenario, adapter=f"refqueue:{mutant}")
        if result.verdict.valid is False:
            break

    shown = sorted({anomaly.kind for anomaly in result.verdict.violations})
    assert result.verdict.valid is False, result.summary()
    assert set(catch.kinds) <= set(shown), (
        f"expected {list(catch.kinds)}, shown {shown}\n{result.summary()}"
    )
    record = json.loads((result.report_dir / "results.json").read_text())
    assert record["valid"] is False
