"""The command line: bad input is one clear line and exit status 2."""

import json
import subprocess
import sys

import pytest


def queue_chaos(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


def assert_one_line_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_scenarios_lists_every_scenario_of_the_catalogue():
    from harness.scenarios import names

    result = queue_chaos("scenarios", "--json")

    assert result.returncode == 0
    assert [s["name"] for s in json.loads(result.stdout)] == names()


def test_an_unknown_scenario_is_named_with_the_fix():
    result = queue_chaos("run", "no-such-scenario")

    assert_one_line_usage_error(result, "'no-such-scenario'", "queue-chaos scenarios")


def test_an_unknown_adapter_is_named_with_the_fix():
    result = queue_chaos("run", "f1-transient-failures", "--adapter", "nope")

    assert_one_line_usage_error(result, "'nope'", "queue-chaos adapters")


def test_a_bad_option_is_one_line_naming_it_and_the_help():
    result = queue_chaos("bench", "--rounds", "x")

    assert_one_line_usage_error(result, "--rounds", "'x'", "queue-chaos bench --help")


def test_an_unknown_mutant_is_named():
    result = queue_chaos("run", "f1-transient-failures", "--adapter", "refqueue:nope")

    assert_one_line_usage_error(result, "'nope'")


def test_a_run_refused_for_its_server_leaves_no_reports_folder(tmp_path):
    reports = tmp_path / "reports"

    result = queue_chaos(
        "run", "f1-transient-failures", "--reports", str(reports),
        "--pg-dsn", "host=127.0.0.1 port=1 user=nobody dbname=nothing",
    )

    assert_one_line_usage_error(result, "port=1", "--pg-dsn")
    assert not reports.exists()


@pytest.mark.parametrize("duration", ["inf", "nan", "0", "-5"])
def test_a_duration_that_is_not_a_finite_positive_number_is_refused(duration):
    result = queue_chaos("run", "f1-transient-failures", "--duration", duration)

    assert_one_line_usage_error(result, f"'{duration}'", "finite number of seconds")


def test_a_seed_that_is_not_a_number_is_refused():
    result = queue_chaos("run", "f1-transient-failures", "--seed", "abc")

    assert result.returncode == 2
    assert "'abc' is not a whole number" in result.stderr


def test_a_reports_folder_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")

    result = queue_chaos("run", "f1-transient-failures", "--reports", str(blocker))

    assert_one_line_usage_error(result, str(blocker), "--reports")


def test_check_refuses_a_truncated_results_file(tmp_path):
    (tmp_path / "results.json").write_text('{"schema": 1, "valid": tr')

    result = queue_chaos("check", str(tmp_path))

    assert_one_line_usage_error(result, "truncated")


def test_check_refuses_results_of_another_version(tmp_path):
    (tmp_path / "results.json").write_text('{"schema": 99}')

    result = queue_chaos("check", str(tmp_path))

    assert_one_line_usage_error(result, "schema 99")


def test_check_refuses_a_folder_without_results(tmp_path):
    result = queue_chaos("check", str(tmp_path))

    assert_one_line_usage_error(result, "no results.json")


@pytest.mark.slow
def test_a_recorded_run_is_judged_the_same_offline(tmp_path):
    run = queue_chaos("run", "f1-transient-failures", "--seed", "3", "--duration",
                      "2", "--reports", str(tmp_path), "-q")
    assert run.returncode == 0, run.stdout + run.stderr
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    recorded = json.loads((run_dir / "results.json").read_text())

    result = queue_chaos("check", str(run_dir), "--json")

    assert result.returncode == 0
    rechecked = json.loads(result.stdout)
    assert rechecked["valid"] is True
    assert rechecked["counts"] == recorded["counts"]

    # a history cut short is unknown, never blamed on the queue
    lines = (run_dir / "history.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "history.jsonl").write_text("".join(lines[: len(lines) // 2]))
    cut = queue_chaos("check", str(run_dir))
    assert cut.returncode == 3, cut.stdout + cut.stderr
    assert "incomplete" in cut.stdout


def test_check_refuses_a_results_file_given_for_its_folder(tmp_path):
    (tmp_path / "results.json").write_text('{"schema": 1}')

    result = queue_chaos("check", str(tmp_path / "results.json"))

    assert_one_line_usage_error(result, "give the folder of one run")
