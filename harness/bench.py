"""`queue-chaos bench`: how fast the queues and the harness do their jobs.

Every figure is measured in one run on one ephemeral cluster, in repeated
rounds, and reported as the median with the lowest and highest round, so a
noisy machine shows as spread rather than as a wrong number. Nothing here is
asserted by a test: the figures go to bench.json and bench.md.

The figures:

- the limit: pgbench single-row insert transactions with synchronous commit,
  1 and 4 clients, in transactions per second;
- each queue (the reference queue and every available adapter): jobs per
  second end to end (enqueue, claim, run an empty job, complete) with 1 and
  4 workers, and the latency from enqueue to start, median and p99;
- the fault proxy: the same pgbench workloads through the proxy and direct;
- the harness: the ledger's cost per execution, the scenario suite's wall
  time serial and with `-n 2`, and the time to catch each mutant from the
  latest `queue-chaos mutants --json` report.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg

from harness import postgres, report
from harness.adapters import Adapter, get_adapter
from harness.errors import UsageError
from harness.history import History
from harness.ledger import Ledger
from harness.workers import WorkerPool

log = logging.getLogger("queue_chaos.bench")

INSERT_SCRIPT = "INSERT INTO bench_insert (v) VALUES (1);\n"
SELECT_SCRIPT = "SELECT 1;\n"


def spread(values: list[float]) -> dict[str, float]:
    """Median, lowest and highest of the rounds, and their number."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "rounds": len(values),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# The limit ---------------------------------------------------------------


def pgbench_tps(
    cluster: postgres.Cluster, dsn_params: dict[str, str], *, clients: int,
    seconds: float, script: str,
) -> float:
    """Transactions per second of pgbench running script with `clients` clients."""
    pgbench = cluster.bindir / "pgbench"
    if not pgbench.exists():
        raise UsageError(f"no pgbench in {cluster.bindir}; install the Postgres client")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [str(pgbench), "-n", "-f", f.name, "-c", str(clients), "-j",
             str(clients), "-T", str(max(1, round(seconds))),
             "-h", dsn_params["host"], "-p", str(dsn_params["port"]),
             "-U", "postgres", dsn_params["dbname"]],
            capture_output=True, text=True, timeout=seconds + 60,
        )
    finally:
        os.unlink(f.name)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)",
                      out.stdout)
    if out.returncode != 0 or not match:
        raise UsageError(f"pgbench failed: {out.stderr.strip()[-300:]}")
    return float(match.group(1))


# Queues ------------------------------------------------------------------


def queue_round(
    adapter: Adapter, server: Any, *, workers: int, jobs: int, clients: int = 4,
) -> dict[str, float]:
    """One round: workers run while clients enqueue `jobs` empty jobs.

    Returns jobs per second (first enqueue to last completion) and the
    latency from each enqueue's commit to its job's start, in ms.
    """
    database = server.create_database()
    ledger_dir = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    pool = None
    try:
        adapter.install(database.dsn)
        ledger = Ledger(ledger_dir)
        pool = WorkerPool(
            lambda name: adapter.worker_command(database.dsn, name),
            size=workers, history=History(),
            env={"QUEUE_CHAOS_LEDGER": str(ledger_dir)},
        )
        pool.start()
        _wait_workers_connected(database, workers)

        keys = [f"b{i:06d}" for i in range(jobs)]
        committed_ns: dict[str, int] = {}
        started = time.monotonic()
        threads = [
            threading.Thread(
                target=_enqueue_all, args=(adapter, database.dsn,
                                           keys[i::clients], committed_ns))
            for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _all_done(adapter, database.dsn, keys):
                break
            time.sleep(0.05)
        else:
            raise UsageError(f"{adapter.name} did not finish {jobs} jobs in 120 s")
        elapsed_s = time.monotonic() - started

        starts = {}
        for record in ledger.read():
            if record["event"] == "start" and record["key"] not in starts:
                starts[record["key"]] = record["t"]
        latencies_ms = [
            (starts[k] - committed_ns[k]) / 1e6 for k in keys if k in starts
        ]
        return {
            "jobs_per_s": jobs / elapsed_s,
            "latency_median_ms": statistics.median(latencies_ms),
            "latency_p99_ms": percentile(latencies_ms, 0.99),
        }
    finally:
        if pool is not None:
            pool.stop(grace_s=5)
        server.drop_database(database.name)
        shutil.rmtree(ledger_dir, ignore_errors=True)


def _wait_workers_connected(database: Any, workers: int) -> None:
    deadline = time.monotonic() + 60
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            connected = conn.execute(
                "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            if connected >= workers:
                return
            time.sleep(0.05)


def _enqueue_all(
    adapter: Adapter, dsn: str, keys: list[str], committed_ns: dict[str, int]
) -> None:
    with psycopg.connect(dsn) as conn:
        for key in keys:
            adapter.enqueue(conn, key, {"key": key, "behaviour": "ok"})
            conn.commit()
            committed_ns[key] = time.monotonic_ns()


def _all_done(adapter: Adapter, dsn: str, keys: list[str]) -> bool:
    states = adapter.snapshot(dsn, keys)
    return all(s.state == "done" for s in states.values())


# The harness ---------------------------------------------------------------


def ledger_cost_us(executions: int = 2000) -> float:
    """Microseconds of ledger work per execution: claim an ordinal, start, finish."""
    directory = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        ledger = Ledger(directory)
        started = time.perf_counter()
        for i in range(executions):
            key = f"k{i}"
            n = ledger.start(key, worker="bench")
            ledger.finish(key, n, "ok", worker="bench")
        return (time.perf_counter() - started) / executions * 1e6
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def suite_wall_s(parallel: int | None) -> float:
    """Wall time of `pytest scenarios/`, serial or with -n parallel."""
    command = [sys.executable, "-m", "pytest", "scenarios/", "-q",
               "-p", "no:cacheprovider", "--reports", tempfile.mkdtemp()]
    if parallel:
        command += ["-n", str(parallel)]
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True)
    elapsed_s = time.monotonic() - started
    if out.returncode != 0:
        tail = out.stdout.strip().splitlines()[-1:] or ["?"]
        raise UsageError(f"the scenario suite failed during the benchmark: {tail[0]}")
    return elapsed_s


def mutant_catch_times(reports_dir: Path) -> dict[str, Any] | None:
    """Seconds to the first catch of each mutant, from the latest mutants report."""
    found = sorted(reports_dir.glob("mutants-*/mutants.json"))
    if not found:
        return None
    record = json.loads(found[-1].read_text())
    return {
        "report": str(found[-1]),
        "score": record.get("score"),
        "seconds": {m["name"]: m.get("seconds") for m in record.get("mutants", [])},
    }


# The whole benchmark ---------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(
    *,
    seconds: float = 3.0,
    rounds: int = 3,
    adapters: list[str] | None = None,
    jobs: int = 1000,
    suite: bool = True,
    reports_dir: Path = Path("reports"),
    say: Callable[[str], None] = lambda text: None,
) -> tuple[dict[str, Any], Path]:
    """Measure everything; returns the bench record and its report folder."""
    out_dir = reports_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=False)
    record: dict[str, Any] = {
        "machine": machine(), "seconds": seconds, "rounds": rounds, "jobs": jobs,
    }
    started = time.monotonic()
    with postgres.Cluster() as cluster:
        record["postgres_bindir"] = str(cluster.bindir)
        database = cluster.create_database()
        with psycopg.connect(database.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_insert (id bigserial, v int)")
        params = {"host": cluster.host, "port": str(cluster.port),
                  "dbname": database.name}

        say("pgbench: the commit limit")
        limit = {}
        for clients in (1, 4):
            limit[f"tps_{clients}_clients"] = spread([
                pgbench_tps(cluster, params, clients=clients, seconds=seconds,
                            script=INSERT_SCRIPT)
                for _ in range(rounds)
            ])
        record["limit"] = limit

        say("the fault proxy against direct")
        record["proxy"] = _proxy_overhead(cluster, params, seconds, rounds)

        queues: dict[str, Any] = {}
        for name in ["refqueue", *(adapters or [])]:
            adapter = get_adapter(name)
            reason = adapter.unavailable()
            if reason:
                queues[name] = {"unavailable": reason}
                continue
            figures: dict[str, Any] = {"version": adapter.version()}
            for workers in (1, 4):
                say(f"{name}: {workers} workers")
                try:
                    samples = [queue_round(adapter, cluster, workers=workers,
                                           jobs=jobs) for _ in range(rounds)]
                except Exception as exc:
                    figures[f"{workers}_workers"] = {"error": str(exc)}
                    continue
                figures[f"{workers}_workers"] = {
                    key: spread([s[key] for s in samples]) for key in samples[0]
                }
                jps = figures[f"{workers}_workers"]["jobs_per_s"]["median"]
                tps = limit[f"tps_{4 if workers == 4 else 1}_clients"]["median"]
                figures[f"{workers}_workers"]["ratio_to_limit"] = round(jps / tps, 3)
            queues[name] = figures
        record["queues"] = queues
        cluster.drop_database(database.name)

    say("the harness")
    harness: dict[str, Any] = {
        "ledger_us_per_execution": spread([ledger_cost_us() for _ in range(rounds)]),
    }
    if suite:
        say("the scenario suite, serial")
        harness["suite_serial_s"] = round(suite_wall_s(None), 1)
        say("the scenario suite, -n 2")
        harness["suite_n2_s"] = round(suite_wall_s(2), 1)
    harness["mutants"] = mutant_catch_times(reports_dir)
    record["harness"] = harness
    record["wall_s"] = round(time.monotonic() - started, 1)

    report.write_atomic(out_dir / "bench.json", json.dumps(record, indent=2))
    report.write_atomic(out_dir / "bench.md", markdown(record))
    return record, out_dir


def _proxy_overhead(
    cluster: postgres.Cluster, params: dict[str, str], seconds: float, rounds: int
) -> dict[str, Any]:
    from harness.netfault import start_server

    figures: dict[str, Any] = {}
    with start_server(0) as server:
        client = server.client()
        proxy = client.create_proxy("bench", f"{cluster.host}:{cluster.port}")
        proxied = {**params, "host": proxy.listen_host, "port": str(proxy.listen_port)}
        for name, script in (("select", SELECT_SCRIPT), ("insert", INSERT_SCRIPT)):
            direct, through = [], []
            for _ in range(rounds):
                direct.append(pgbench_tps(cluster, params, clients=1,
                                          seconds=seconds, script=script))
                through.append(pgbench_tps(cluster, proxied, clients=1,
                                           seconds=seconds, script=script))
            figures[name] = {
                "direct_tps": spread(direct),
                "proxy_tps": spread(through),
                "ratio": round(statistics.median(through) / statistics.median(direct),
                               3),
            }
    return figures


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [
        "# Benchmark",
        "",
        f"{m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"{m['system']}, Python {m['python']}; Postgres from "
        f"{record['postgres_bindir']}. Median of {record['rounds']} rounds "
        "(lowest to highest).",
        "",
        "## The limit: pgbench single-row inserts, synchronous commit",
        "",
        "| clients | tps |",
        "|---|---|",
    ]
    for name, value in record["limit"].items():
        lines.append(f"| {name.split('_')[1]} | {_fmt(value)} |")
    lines += ["", "## Queues: empty jobs end to end", "",
              "| queue | workers | jobs/s | of the limit | start latency median "
              "(ms) | p99 (ms) |", "|---|---|---|---|---|---|"]
    for name, figures in record["queues"].items():
        if "unavailable" in figures:
            lines.append(f"| {name} | - | unavailable: {figures['unavailable']} "
                         "| | | |")
            continue
        for workers in (1, 4):
            f = figures.get(f"{workers}_workers", {})
            if "error" in f:
                lines.append(f"| {name} | {workers} | error: {f['error']} | | | |")
                continue
            lines.append(
                f"| {name} {figures['version']} | {workers} | "
                f"{_fmt(f['jobs_per_s'])} | {f['ratio_to_limit']:.2f} | "
                f"{_fmt(f['latency_median_ms'])} | {_fmt(f['latency_p99_ms'])} |"
            )
    lines += ["", "## The fault proxy, 1 client", "",
              "| workload | direct tps | through the proxy | ratio |", "|---|---|---|---|"]
    for name, f in record["proxy"].items():
        lines.append(f"| {name} | {_fmt(f['direct_tps'])} | {_fmt(f['proxy_tps'])} "
                     f"| {f['ratio']:.2f} |")
    h = record["harness"]
    lines += ["", "## The harness", "",
              f"- ledger: {_fmt(h['ledger_us_per_execution'])} µs per execution"]
    if "suite_serial_s" in h:
        lines.append(f"- `pytest scenarios/`: {h['suite_serial_s']} s serial, "
                     f"{h['suite_n2_s']} s with -n 2")
    mutants = h.get("mutants")
    if mutants:
        lines.append(f"- time to catch each mutant (from {mutants['report']}):")
        for name, seconds in sorted(mutants["seconds"].items()):
            lines.append(f"  - {name}: {seconds} s")
    else:
        lines.append("- time to catch each mutant: no `queue-chaos mutants --json` "
                     "report yet; run it first")
    lines += ["", f"Whole benchmark: {record['wall_s']} s.", ""]
    return "\n".join(lines)


def _fmt(value: dict[str, float]) -> str:
    return f"{value['median']:g} ({value['min']:g}–{value['max']:g})"
