"""Where the CPU of one job goes: the bench's workload, CPU time by process kind.

Usage:
    .venv/bin/python benchmarks/cpu_per_job.py [--workers 4] [--jobs 5000]
        [--adapter refqueue] [--runs 3]

Runs `queue-chaos bench`'s saturated workload (4 clients enqueue empty jobs
on autocommit connections, the workers run and complete them) on an
ephemeral cluster, and reads the CPU time that each kind of process used
during the batch: the Postgres server processes, the queue's worker
processes, their children (refqueue's job processes), and this process (the
clients and the bench's polling). On a machine with C cores, a queue can run
at most C / (the sum per job) jobs per second, whatever its round trips.
Each run prints one line; the last line gives the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import psutil

from harness import postgres
from harness.adapters import get_adapter
from harness.bench import QueueBench

WARM_UP_JOBS = 50


def cpu_by_kind(pool_pids: set[int]) -> dict[str, float]:
    """CPU seconds used so far by each kind of process of the workload."""
    used: dict[str, float] = {"postgres": 0.0, "workers": 0.0, "children": 0.0}
    me = psutil.Process()
    used["bench"] = sum(me.cpu_times()[:2])
    for process in psutil.process_iter(["pid", "ppid", "name", "cpu_times"]):
        info = process.info
        if info["cpu_times"] is None:
            continue
        seconds = info["cpu_times"].user + info["cpu_times"].system
        if info["name"] == "postgres":
            used["postgres"] += seconds
        elif info["pid"] in pool_pids:
            used["workers"] += seconds
        elif info["ppid"] in pool_pids:
            used["children"] += seconds
    return used


def measure(adapter: str, server, workers: int, jobs: int) -> dict:
    bench = QueueBench(get_adapter(adapter), server, workers=workers)
    with bench.running():
        bench.saturated(WARM_UP_JOBS)
        pids = {worker.pid for worker in bench.pool.running()}
        before = cpu_by_kind(pids)
        batch = bench.saturated(jobs)
        after = cpu_by_kind(pids)
    us_per_job = {
        kind: round((after[kind] - before[kind]) / jobs * 1e6)
        for kind in after
    }
    total_us = sum(us_per_job.values())
    return {
        "adapter": adapter, "workers": workers, "jobs": jobs,
        "jobs_per_s": round(batch.steady_per_s),
        "batch_jobs_per_s": round(batch.jobs_per_s),
        "cpu_us_per_job": us_per_job, "cpu_us_per_job_total": total_us,
        "cpu_bound_jobs_per_s": round(os.cpu_count() / total_us * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="refqueue")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    runs = []
    with postgres.Cluster() as server:
        for _ in range(args.runs):
            runs.append(measure(args.adapter, server, args.workers, args.jobs))
            print(json.dumps(runs[-1]), flush=True)
    kinds = runs[0]["cpu_us_per_job"]
    print(json.dumps({
        "median": True,
        "jobs_per_s": statistics.median(r["jobs_per_s"] for r in runs),
        "cpu_us_per_job": {
            kind: statistics.median(r["cpu_us_per_job"][kind] for r in runs)
            for kind in kinds
        },
        "cpu_us_per_job_total": statistics.median(
            r["cpu_us_per_job_total"] for r in runs
        ),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
