"""The benchmark's helpers on literal values; no timing is asserted anywhere."""

from __future__ import annotations

import json
import os

from harness.bench import (
    Batch,
    OkCounter,
    batch_size,
    markdown,
    mutant_catch_times,
    paced_schedule_s,
    percentile,
    spread,
)


def test_a_spread_is_the_median_lowest_and_highest_of_the_rounds():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                       "rounds": 3}
    assert spread([5.0]) == {"median": 5.0, "min": 5.0, "max": 5.0, "rounds": 1}


def test_a_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_paced_clients_take_turns_at_an_even_rate():
    schedule = paced_schedule_s(jobs=10, rate_per_s=5.0, clients=4)

    assert schedule == [
        [0.0, 0.8, 1.6],
        [0.2, 1.0, 1.8],
        [0.4, 1.2],
        [0.6, 1.4],
    ]


def test_a_batch_has_the_jobs_of_its_time_within_bounds():
    assert batch_size(200.0, 2.0, least=30, most=1000, longest_s=3.0) == 400
    assert batch_size(20.0, 1.0, least=30, most=1000, longest_s=3.0) == 30
    assert batch_size(5.0, 1.0, least=30, most=1000, longest_s=3.0) == 15
    assert batch_size(0.1, 1.0, least=30, most=1000, longest_s=3.0) == 2
    assert batch_size(5000.0, 1.0, least=30, most=1000, longest_s=3.0) == 1000


def test_a_batch_knows_its_rate():
    assert Batch(jobs=300, elapsed_s=1.5).jobs_per_s == 200.0


def test_the_steady_rate_leaves_out_the_wait_before_the_first_job_and_after_the_last():
    # 100 jobs a millisecond apart, after a poll of a second and before
    # another: the batch took 2.1 s, its middle ran at 1,000 jobs/s
    ends_ns = [1_000_000_000 + i * 1_000_000 for i in range(99)] + [2_100_000_000]
    batch = Batch(jobs=100, elapsed_s=2.1, ends_ns=ends_ns)

    assert round(batch.jobs_per_s) == 48
    assert round(batch.steady_per_s) == 1000


def test_a_batch_too_small_for_a_middle_has_its_batch_rate_as_steady_rate():
    batch = Batch(jobs=5, elapsed_s=0.5, ends_ns=[1, 2, 3, 4, 5])
    assert batch.steady_per_s == batch.jobs_per_s == 10.0


def ok_line(key):
    record = {"t": 1, "key": key, "n": 1, "event": "ok", "worker": "w", "pid": 1}
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def test_the_ok_counter_counts_complete_lines_and_new_files_as_they_come(tmp_path):
    counter = OkCounter(tmp_path)
    first = tmp_path / "1-a.jsonl"
    first.write_bytes(ok_line("a") + b'{"t":2,"key":"b","n":1,"event":"start"}\n')
    assert counter() == 1

    # a line still being written is counted once it is whole
    whole = ok_line("c")
    with open(first, "ab") as f:
        f.write(whole[:20])
    assert counter() == 1
    with open(first, "ab") as f:
        f.write(whole[20:])
    (tmp_path / "2-b.jsonl").write_bytes(ok_line("d") + ok_line("e"))
    (tmp_path / "ordinals").mkdir()

    assert counter() == 4
    counter.close()


def write_mutants_report(folder, score, seconds, mtime):
    folder.mkdir(parents=True)
    record = {
        "score": score,
        "mutants": [
            {"name": "no_heartbeat", "seconds": seconds, "scenarios": ["f5-hung"]},
            {"name": "no_reconnect", "seconds": None, "scenarios": []},
        ],
    }
    path = folder / "mutants.json"
    path.write_text(json.dumps(record))
    os.utime(path, (mtime, mtime))


def test_mutant_catch_times_come_from_the_latest_report(tmp_path):
    assert mutant_catch_times(tmp_path) is None

    write_mutants_report(tmp_path / "mutants-b", "1/2", 9.5, mtime=1_000)
    write_mutants_report(tmp_path / "mutants-a", "2/2", 4.0, mtime=2_000)

    assert mutant_catch_times(tmp_path) == {
        "report": str(tmp_path / "mutants-a" / "mutants.json"),
        "score": "2/2",
        "seconds": {"no_heartbeat": 4.0, "no_reconnect": None},
        "caught_by": {"no_heartbeat": "f5-hung", "no_reconnect": None},
    }


def figure(median):
    return {"median": median, "min": median, "max": median, "rounds": 1}


def queue_figures(jobs_per_s):
    return {
        "jobs_per_s": figure(jobs_per_s),
        "batch_jobs_per_s": figure(jobs_per_s / 2),
        "latency_median_ms": figure(4.0),
        "latency_p99_ms": figure(15.0),
        "jobs_per_round": [400, 380, 380],
        "latency_at_fraction_of_rate": 0.5,
        "ratio_to_limit": 0.4,
        "limit_clients": 4,
    }


def test_the_report_shows_every_figure_and_every_failure():
    record = {
        "machine": {"cpus": 2, "cpu_model": "cpu", "memory_gib": 4.0,
                    "system": "Linux", "python": "3.11", "load_average": [1.0]},
        "postgres_bindir": "/pg/bin",
        "rounds": 1,
        "clients": 4,
        "limit": {"tps_1_clients": figure(500.0), "tps_4_clients": figure(1000.0)},
        "queues": {
            "refqueue": {"version": "0.1.0", "1_workers": queue_figures(200.0),
                         "4_workers": queue_figures(400.0)},
            "chancy": {"version": "0.26.0", "1_workers": {"error": "boom"},
                       "4_workers": queue_figures(30.0)},
            "pq": {"unavailable": "no environment"},
        },
        "proxy": {"select": {"direct_tps": figure(9000.0),
                             "proxy_tps": figure(3000.0), "ratio": figure(0.333)}},
        "harness": {
            "ledger_us_per_execution": figure(40.0),
            "suite_serial": {"seconds": 200.0, "passed": True, "summary": "ok"},
            "suite_n2": {"seconds": 120.0, "passed": False,
                         "summary": "1 failed, 14 passed"},
            "mutants": None,
        },
        "parts_s": {"limit": 12.0},
        "wall_s": 500.0,
    }

    text = markdown(record)

    assert "| 4 | 1000 (1000–1000) |" in text
    assert (
        "| refqueue 0.1.0 | 4 | 400 (400–400) | 0.40 | 200 (200–200) | 4 (4–4) "
        "| 15 (15–15) "
        "| 400/380/380 |" in text
    )
    assert "| chancy | 1 | error: boom |" in text
    assert "| pq | - | unavailable: no environment |" in text
    assert "| select | 9000 (9000–9000) | 3000 (3000–3000) | 0.333 " in text
    assert "- ledger: 40 (40–40) µs per execution" in text
    assert "`pytest scenarios/` serial: 200.0 s" in text
    assert "with -n 2: 120.0 s (failed: 1 failed, 14 passed)" in text
    assert "no `queue-chaos mutants --json` report yet" in text
    assert "Whole benchmark: 500.0 s (limit 12.0 s)." in text
