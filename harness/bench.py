"""`queue-chaos bench`: how fast the queues and the harness do their jobs.

Every figure is measured in one run on one ephemeral cluster, in repeated
rounds, and reported as the median with the lowest and highest round, so a
noisy machine shows as spread rather than as a wrong number. Nothing here is
asserted by a test: the figures go to bench.json and bench.md.

The figures:

- the limit: pgbench single-row insert transactions with synchronous commit,
  1 and 4 clients, in transactions per second;
- each queue (the reference queue and every available library adapter, each
  library in its own environment), with 1 and 4 worker processes: jobs per
  second end to end (4 clients enqueue empty jobs as fast as they can, each
  enqueue an implicit transaction of its own on an autocommit connection,
  like each insert of the limit; workers claim, run and complete them):
  the steady rate, at which the middle of a batch ran, and the batch rate,
  from the first enqueue to the moment all are done; and the
  latency from an enqueue's commit to its job's start, median and p99.
  Latency is measured at half the throughput just measured, not under
  saturation, where it would only tell how long the backlog was;
- the fault proxy: pgbench through the proxy against direct, 1 client, in
  rounds a third as long as those of the limit;
- the harness: the ledger's cost per execution, the scenario suite's wall
  time serial and with `-n 2` (one round each: they are the longest part),
  and the time to catch each mutant from the latest `queue-chaos mutants`
  report.

A queue's rounds share one database and one set of workers, started and
warmed up once (the 4 workers are the 1 worker and 3 more), so that rounds
measure the queue rather than the start of its workers.
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import psutil
import psycopg

from harness import postgres, report
from harness.adapters import Adapter, get_adapter, libraries
from harness.errors import QueueChaosError, UsageError
from harness.history import History
from harness.ledger import Ledger
from harness.workers import WorkerPool

log = logging.getLogger("queue_chaos.bench")

INSERT_SCRIPT = "INSERT INTO bench_insert (v) VALUES (1);\n"
SELECT_SCRIPT = "SELECT 1;\n"

#: The proxy's rounds last this share of a round of the limit (at least 1 s):
#: each of its ratios compares two runs back to back, of thousands of
#: transactions each even at a second.
PROXY_SHARE = 1 / 3
#: Clients that enqueue in every queue round, each on a connection of its own.
CLIENTS = 4
#: Worker processes of the two configurations measured for each queue.
WORKER_COUNTS = (1, 4)
#: Throughput rounds aim at about this long, so slow queues get fewer jobs ...
ROUND_S = 0.7
#: ... but at least this many: below this a rate means little ...
MIN_JOBS = 10
#: ... unless so many take longer than this; then as many as fit (at least 2).
LONGEST_BATCH_S = 0.8
#: Latency rounds enqueue at this fraction of the measured throughput, for
#: about this long, and at least this many jobs (or as many as fit).
PACED_FRACTION = 0.5
PACED_S = 0.3
MIN_PACED_JOBS = 15
#: Jobs of the batch that sizes the rounds, at least (at most --jobs), unless
#: the warm-up's rate says they take longer than CALIBRATION_LONGEST_S.
CALIBRATION_JOBS = 50
CALIBRATION_LONGEST_S = 3.0
#: Jobs per worker of the first batch of new workers, which waits for their start.
WARM_UP_JOBS_PER_WORKER = 2
#: How long a batch of jobs may take to be done before the queue is given up.
BATCH_DEADLINE_S = 60.0
#: How long stopped workers may take to exit before they are killed: every job
#: is done by then, so nothing is lost by a short wait.
STOP_GRACE_S = 0.5
#: How long workers may take to start before the queue is given up.
READY_DEADLINE_S = 60.0
#: Workers count as started after two windows of this length in which they
#: used less CPU than this, per worker (a started, idle worker uses ~0.02).
QUIET_WINDOW_S = 0.25
QUIET_CORES_PER_WORKER = 0.1
#: A batch's steady rate is that of its jobs from this fraction to that one,
#: in the order they ended, when it has at least MIN_STEADY_JOBS.
STEADY_FROM = 0.2
STEADY_TO = 0.8
MIN_STEADY_JOBS = 20
#: How often a batch looks whether its jobs are done: a small part of a round.
POLL_S = 0.01
#: Ledger records of successful executions, counted without parsing.
_OK_RECORD = b'"event":"ok"'


def spread(values: list[float]) -> dict[str, float]:
    """Median, lowest and highest of the rounds, and their number."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "rounds": len(values),
    }


def percentile(values: list[float], q: float) -> float:
    """The value at quantile q (0 to 1) of values, nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# The limit ---------------------------------------------------------------


def pgbench_tps(
    cluster: postgres.Cluster,
    dsn_params: dict[str, str],
    *,
    clients: int,
    seconds: float,
    script: str,
) -> float:
    """Transactions per second of pgbench running script with `clients` clients."""
    pgbench = cluster.bindir / "pgbench"
    if not pgbench.exists():
        raise UsageError(f"no pgbench in {cluster.bindir}; install the Postgres client")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    command = [
        str(pgbench), "-n", "-f", f.name, "-c", str(clients), "-j", str(clients),
        "-T", str(max(1, round(seconds))), "-h", dsn_params["host"],
        "-p", str(dsn_params["port"]), "-U", "postgres", dsn_params["dbname"],
    ]
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    finally:
        os.unlink(f.name)
    match = re.search(
        r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout
    )
    if out.returncode != 0 or not match:
        raise UsageError(f"pgbench failed: {out.stderr.strip()[-300:]}")
    return float(match.group(1))


# Queues ------------------------------------------------------------------


@dataclass
class Batch:
    """What one batch of jobs measured: its rate and its start latencies.

    ``elapsed_s`` runs from the first enqueue to the moment every job was
    seen done.
    """

    jobs: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    #: When each job's successful execution ended, monotonic ns, in order.
    ends_ns: list[int] = field(default_factory=list)

    @property
    def jobs_per_s(self) -> float:
        """The rate of the whole batch, from the first enqueue to the last done."""
        return self.jobs / self.elapsed_s

    @property
    def steady_per_s(self) -> float:
        """The rate at which the middle of the batch ran (STEADY_FROM to STEADY_TO).

        A queue that polls waits up to a poll interval before its first job
        and may leave the last ones to a poll; the batch rate counts those
        waits, this rate does not. Small batches have no middle to speak of:
        their rate is the batch rate.
        """
        ends = self.ends_ns
        first, last = int(STEADY_FROM * len(ends)), int(STEADY_TO * len(ends))
        if len(ends) < MIN_STEADY_JOBS or ends[last] <= ends[first]:
            return self.jobs_per_s
        return (last - first) / ((ends[last] - ends[first]) / 1e9)


class OkCounter:
    """Counts the successful executions in a ledger directory as it grows.

    Each call reads only what was appended since the last one, up to the last
    complete line, from files it keeps open, so polling it often costs next
    to nothing. ``close`` closes them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, BinaryIO] = {}
        # What each file held after its last complete line, not yet counted.
        self._partial: dict[str, bytes] = {}
        self.count = 0

    def __repr__(self) -> str:
        return f"<OkCounter {self.directory} count={self.count}>"

    def __call__(self) -> int:
        for name in os.listdir(self.directory):
            if name.endswith(".jsonl") and name not in self._files:
                self._files[name] = open(self.directory / name, "rb")  # noqa: SIM115
        for name, f in self._files.items():
            data = self._partial.get(name, b"") + f.read()
            complete = data.rfind(b"\n") + 1
            self.count += data.count(_OK_RECORD, 0, complete)
            self._partial[name] = data[complete:]
        return self.count

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def paced_schedule_s(jobs: int, rate_per_s: float, clients: int) -> list[list[float]]:
    """Per client, the offsets in seconds at which it enqueues its jobs.

    Together the clients enqueue `jobs` jobs evenly spaced at `rate_per_s`;
    client i takes jobs i, i + clients, ...
    """
    return [
        [index / rate_per_s for index in range(i, jobs, clients)]
        for i in range(clients)
    ]


class QueueBench:
    """One queue with a fixed number of workers, measured batch by batch.

    Opens a database, installs the queue, starts the workers and the clients'
    connections once; each batch then enqueues its jobs and waits until the
    queue has completed every one.
    """

    def __init__(
        self, adapter: Adapter, server: Any, *, workers: int, clients: int = CLIENTS
    ) -> None:
        self.adapter = adapter
        self.server = server
        self.workers = workers
        self.clients = clients
        self._batches = 0

    def __repr__(self) -> str:
        return f"<QueueBench {self.adapter.name} workers={self.workers}>"

    @contextmanager
    def running(self) -> Iterator[QueueBench]:
        """Set up everything, yield, and tear it all down again."""
        with ExitStack() as stack:
            database = self.server.create_database()
            stack.callback(self.server.drop_database, database.name)
            self.dsn = database.dsn
            self.ledger_dir = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
            stack.callback(shutil.rmtree, self.ledger_dir, ignore_errors=True)
            self.ledger = Ledger(self.ledger_dir)
            self.ok = OkCounter(self.ledger_dir)
            stack.callback(self.ok.close)

            self.adapter.install(self.dsn)
            self.pool = WorkerPool(
                lambda name: self.adapter.worker_command(self.dsn, name),
                size=self.workers,
                history=History(),
                env={"QUEUE_CHAOS_LEDGER": str(self.ledger_dir)},
            )
            stack.callback(self.pool.stop, grace_s=STOP_GRACE_S)
            self.pool.start()
            # Autocommit: each enqueue is an implicit transaction of its own,
            # as each insert of the pgbench limit is.
            self.connections = [
                stack.enter_context(psycopg.connect(self.dsn, autocommit=True))
                for _ in range(self.clients)
            ]
            self._wait_started()
            yield self

    def grow(self, workers: int) -> None:
        """Start workers until `workers` run, and wait until they have started."""
        if workers != self.workers:
            self.workers = self.pool.size = workers
            self.pool.start()
            self._wait_started()

    def saturated(self, jobs: int) -> Batch:
        """Clients enqueue `jobs` jobs as fast as they can; time until all done."""
        return self._batch(jobs, None)

    def paced(self, jobs: int, rate_per_s: float) -> Batch:
        """Clients enqueue `jobs` jobs at `rate_per_s`; time until all done."""
        return self._batch(jobs, paced_schedule_s(jobs, rate_per_s, self.clients))

    def _batch(self, jobs: int, schedule_s: list[list[float]] | None) -> Batch:
        self._batches += 1
        keys = [f"b{self._batches}-{i:06d}" for i in range(jobs)]
        ok_before = self.ok()
        committed_ns: dict[str, int] = {}
        errors: list[BaseException] = []
        started_s = time.monotonic()
        threads = [
            threading.Thread(
                target=self._enqueue_all,
                args=(
                    conn,
                    keys[i :: self.clients],
                    None if schedule_s is None else schedule_s[i],
                    started_s,
                    committed_ns,
                    errors,
                ),
                name=f"bench client {i}",
            )
            for i, conn in enumerate(self.connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise UsageError(f"{self.adapter.name}: enqueue failed: {errors[0]}")

        self._wait_done(keys, ok_before + jobs, started_s)
        elapsed_s = time.monotonic() - started_s

        starts: dict[str, int] = {}
        ends: dict[str, int] = {}
        wanted = set(keys)
        for record in self.ledger.read():
            key = record["key"]
            if key not in wanted:
                continue
            if record["event"] == "start":
                starts.setdefault(key, record["t"])
            elif record["event"] == "ok":
                ends.setdefault(key, record["t"])
        latencies_ms = [
            (starts[key] - committed_ns[key]) / 1e6 for key in keys if key in starts
        ]
        return Batch(jobs, elapsed_s, latencies_ms, sorted(ends.values()))

    def _enqueue_all(
        self,
        conn: psycopg.Connection[Any],
        keys: list[str],
        offsets_s: list[float] | None,
        started_s: float,
        committed_ns: dict[str, int],
        errors: list[BaseException],
    ) -> None:
        try:
            for index, key in enumerate(keys):
                if offsets_s is not None:
                    delay_s = started_s + offsets_s[index] - time.monotonic()
                    if delay_s > 0:
                        time.sleep(delay_s)
                self.adapter.enqueue(conn, key, {"key": key, "behaviour": "ok"})
                committed_ns[key] = time.monotonic_ns()
        except Exception as exc:  # noqa: BLE001 - raised again in the main thread
            errors.append(exc)

    def _wait_done(self, keys: list[str], ok_total: int, started_s: float) -> None:
        # The ledger says cheaply when every job has run; the queue's own
        # snapshot then says when it has recorded them all as done.
        deadline_s = started_s + BATCH_DEADLINE_S
        while self.ok() < ok_total:
            if time.monotonic() > deadline_s:
                raise UsageError(
                    f"{self.adapter.name} ran {self.ok.count - ok_total + len(keys)} "
                    f"of {len(keys)} jobs in {BATCH_DEADLINE_S:g} s"
                )
            time.sleep(POLL_S)
        while True:
            states = self.adapter.snapshot(self.dsn, keys)
            if all(state.state == "done" for state in states.values()):
                return
            if time.monotonic() > deadline_s:
                raise UsageError(
                    f"{self.adapter.name} ran every job but did not mark them all "
                    f"done in {BATCH_DEADLINE_S:g} s"
                )
            time.sleep(POLL_S)

    def _wait_started(self) -> None:
        # Starting a worker (imports, connecting, forking its own processes)
        # keeps it busy; an idle one only polls. The pool is taken as started
        # once it has used little CPU for a while.
        deadline_s = time.monotonic() + READY_DEADLINE_S
        quiet_cores = QUIET_CORES_PER_WORKER * self.workers
        used_s = self._pool_cpu_s()
        quiet_windows = 0
        while quiet_windows < 2:
            if time.monotonic() > deadline_s:
                raise UsageError(
                    f"{self.adapter.name}: workers still busy starting after "
                    f"{READY_DEADLINE_S:g} s"
                )
            time.sleep(QUIET_WINDOW_S)
            if len(self.pool.running()) < self.workers:
                raise UsageError(
                    f"{self.adapter.name}: a worker exited during its start"
                )
            previous_s, used_s = used_s, self._pool_cpu_s()
            busy = used_s - previous_s > quiet_cores * QUIET_WINDOW_S
            quiet_windows = 0 if busy else quiet_windows + 1

    def _pool_cpu_s(self) -> float:
        total_s = 0.0
        for worker in self.pool.running():
            try:
                process = psutil.Process(worker.pid)
                family = [process, *process.children(recursive=True)]
            except psutil.Error:
                continue
            for member in family:
                try:
                    times = member.cpu_times()
                except psutil.Error:
                    continue
                total_s += times.user + times.system
        return total_s


def measure_queue(
    adapter: Adapter,
    server: Any,
    *,
    rounds: int,
    jobs: int,
    worker_counts: tuple[int, ...] = WORKER_COUNTS,
    round_s: float = ROUND_S,
    say: Callable[[str], None] = lambda text: None,
) -> dict[int, dict[str, Any]]:
    """Throughput and start latency of one queue with each number of workers.

    The numbers are measured in increasing order on one database, workers
    added to those already running; a failure is the figure of the number
    being measured, and the next one starts afresh.
    """
    figures: dict[int, dict[str, Any]] = {}
    pending = sorted(worker_counts)
    while pending:
        try:
            with QueueBench(adapter, server, workers=pending[0]).running() as bench:
                while pending:
                    bench.grow(pending[0])
                    say(f"{adapter.name}: {pending[0]} workers")
                    figures[pending[0]] = measure_rounds(
                        bench, rounds=rounds, jobs=jobs, round_s=round_s
                    )
                    pending.pop(0)
        except Exception as exc:  # noqa: BLE001 - one failure is one figure
            log.warning(
                "queue not measured",
                extra={"queue": adapter.name, "workers": pending[0], "error": exc},
            )
            figures[pending.pop(0)] = {"error": str(exc)}
    return figures


def measure_rounds(
    bench: QueueBench, *, rounds: int, jobs: int, round_s: float = ROUND_S
) -> dict[str, Any]:
    """Throughput and start latency of a running queue, over `rounds` rounds.

    Two batches that are not reported come first: a small one while new
    workers finish starting, then one of about half a round (at least
    CALIBRATION_JOBS where they fit in CALIBRATION_LONGEST_S) whose steady
    rate sets the size of the rounds: as many jobs as the queue runs in about
    `round_s` (``batch_size``), at most `jobs`. A round slower than
    that makes the next ones smaller, never larger: some queues wait for a
    poll now and then, and a round sized on a fast run then takes many
    times as long. Each round is one saturated batch, then one paced batch
    at half its rate.
    """
    warm_up = bench.saturated(min(jobs, WARM_UP_JOBS_PER_WORKER * bench.workers))
    # CALIBRATION_JOBS if they fit: a queue that fetches jobs in batches, or
    # waits for its poll, is slow on a handful; enough jobs have a middle
    # whose steady rate says how fast it runs once it runs.
    calibration = bench.saturated(batch_size(
        warm_up.jobs_per_s, round_s / 2, least=CALIBRATION_JOBS, most=jobs,
        longest_s=CALIBRATION_LONGEST_S,
    ))
    slowest_per_s = calibration.steady_per_s
    sizes: list[int] = []
    rates: list[float] = []
    batch_rates: list[float] = []
    medians: list[float] = []
    p99s: list[float] = []
    for _ in range(rounds):
        size = batch_size(slowest_per_s, round_s, least=MIN_JOBS, most=jobs)
        saturated = bench.saturated(size)
        sizes.append(size)
        rates.append(saturated.steady_per_s)
        batch_rates.append(saturated.jobs_per_s)
        slowest_per_s = min(slowest_per_s, saturated.steady_per_s)
        rate = PACED_FRACTION * saturated.steady_per_s
        paced_jobs = batch_size(rate, PACED_S, least=MIN_PACED_JOBS, most=size)
        paced = bench.paced(paced_jobs, rate)
        medians.append(statistics.median(paced.latencies_ms))
        p99s.append(percentile(paced.latencies_ms, 0.99))
    return {
        "jobs_per_s": spread(rates),
        "batch_jobs_per_s": spread(batch_rates),
        "latency_median_ms": spread(medians),
        "latency_p99_ms": spread(p99s),
        "jobs_per_round": sizes,
        "latency_at_fraction_of_rate": PACED_FRACTION,
    }


def batch_size(
    rate_per_s: float,
    target_s: float,
    *,
    least: int,
    most: int,
    longest_s: float = LONGEST_BATCH_S,
) -> int:
    """Jobs for about `target_s` at `rate_per_s`, within bounds.

    At least `least`, or as many as `longest_s` takes when that is fewer, and
    at least 2; at most `most`.
    """
    floor = min(least, rate_per_s * longest_s)
    return max(2, round(min(most, max(floor, rate_per_s * target_s))))


# The harness ---------------------------------------------------------------


def ledger_cost_us(executions: int = 2000) -> float:
    """Microseconds of ledger work per execution, as a job body does it.

    Open the ledger, claim an ordinal and record the start, record the end;
    where scenario runs keep their ledgers, under reports/ on disk.
    """
    directory = Path(tempfile.mkdtemp(prefix="bench-ledger-", dir=_ledger_parent()))
    try:
        started = time.perf_counter()
        for i in range(executions):
            key = f"k{i}"
            ledger = Ledger(directory)
            n = ledger.start(key, worker="bench")
            ledger.finish(key, n, "ok", worker="bench")
        return (time.perf_counter() - started) / executions * 1e6
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _ledger_parent() -> str | None:
    reports = Path("reports")
    return str(reports) if reports.is_dir() else None


def suite_wall_s(parallel: int | None) -> dict[str, Any]:
    """Wall time of `pytest scenarios/`, serial or with -n parallel, and its result.

    A failing suite is timed all the same; its last line says what failed.
    """
    reports = tempfile.mkdtemp(prefix="bench-suite-")
    command = [
        sys.executable, "-m", "pytest", "scenarios/", "-q", "-p", "no:cacheprovider",
        "--reports", reports,
    ]
    if parallel:
        command += ["-n", str(parallel)]
    started = time.monotonic()
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(reports, ignore_errors=True)
    elapsed_s = time.monotonic() - started
    summary = (out.stdout.strip().splitlines() or ["?"])[-1].strip("= ")
    return {
        "seconds": round(elapsed_s, 1),
        "passed": out.returncode == 0,
        "summary": summary,
    }


def mutant_catch_times(reports_dir: Path) -> dict[str, Any] | None:
    """Seconds to the first catch of each mutant, from the latest mutants report."""
    found = list(reports_dir.glob("mutants-*/mutants.json"))
    if not found:
        return None
    latest = max(found, key=lambda path: path.stat().st_mtime)
    record = json.loads(latest.read_text())
    return {
        "report": str(latest),
        "score": record.get("score"),
        "seconds": {m["name"]: m.get("seconds") for m in record.get("mutants", [])},
        "caught_by": {
            m["name"]: (m.get("scenarios") or [None])[0]
            for m in record.get("mutants", [])
        },
    }


# The whole benchmark ---------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": [round(load, 2) for load in os.getloadavg()],
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
    seconds: float = 2.0,
    rounds: int = 3,
    adapters: list[str] | None = None,
    jobs: int = 1000,
    suite: bool = True,
    reports_dir: Path = Path("reports"),
    say: Callable[[str], None] = lambda text: None,
) -> tuple[dict[str, Any], Path]:
    """Measure everything; returns the bench record and its report folder.

    ``adapters`` None measures every library adapter available here.
    """
    out_dir = reports_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=False)
    proxy_s = max(1.0, seconds * PROXY_SHARE)
    record: dict[str, Any] = {
        "machine": machine(), "seconds": seconds, "proxy_seconds": proxy_s,
        "rounds": rounds, "jobs": jobs, "clients": CLIENTS,
    }
    parts_s: dict[str, float] = {}
    started = time.monotonic()
    with postgres.Cluster() as cluster:
        record["postgres_bindir"] = str(cluster.bindir)
        database = cluster.create_database()
        with psycopg.connect(database.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_insert (id bigserial, v int)")
        params = {"host": cluster.host, "port": str(cluster.port),
                  "dbname": database.name}

        say("pgbench: the commit limit")
        part_started = time.monotonic()
        limit = {}
        for clients in (1, CLIENTS):
            limit[f"tps_{clients}_clients"] = spread([
                pgbench_tps(cluster, params, clients=clients, seconds=seconds,
                            script=INSERT_SCRIPT)
                for _ in range(rounds)
            ])
        record["limit"] = limit
        parts_s["limit"] = time.monotonic() - part_started

        say("the fault proxy against direct")
        part_started = time.monotonic()
        record["proxy"] = _proxy_overhead(cluster, params, proxy_s, rounds)
        parts_s["proxy"] = time.monotonic() - part_started

        queues: dict[str, Any] = {}
        names = libraries() if adapters is None else adapters
        for name in ["refqueue", *names]:
            part_started = time.monotonic()
            queues[name] = _measure_adapter(
                name, cluster, limit, rounds=rounds, jobs=jobs, say=say
            )
            parts_s[f"queue {name}"] = time.monotonic() - part_started
        record["queues"] = queues
        cluster.drop_database(database.name)

    say("the harness")
    part_started = time.monotonic()
    harness: dict[str, Any] = {
        "ledger_us_per_execution": spread([ledger_cost_us() for _ in range(rounds)]),
    }
    if suite:
        say("the scenario suite, serial")
        harness["suite_serial"] = suite_wall_s(None)
        say("the scenario suite, -n 2")
        harness["suite_n2"] = suite_wall_s(2)
    harness["mutants"] = mutant_catch_times(reports_dir)
    record["harness"] = harness
    parts_s["harness"] = time.monotonic() - part_started
    record["parts_s"] = {name: round(value, 1) for name, value in parts_s.items()}
    record["wall_s"] = round(time.monotonic() - started, 1)

    report.write_atomic(out_dir / "bench.json", json.dumps(record, indent=2))
    report.write_atomic(out_dir / "bench.md", markdown(record))
    return record, out_dir


def _measure_adapter(
    name: str,
    cluster: postgres.Cluster,
    limit: dict[str, Any],
    *,
    rounds: int,
    jobs: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    try:
        adapter = get_adapter(name)
        reason = adapter.unavailable()
    except QueueChaosError as exc:
        return {"unavailable": str(exc)}
    if reason:
        return {"unavailable": reason}
    figures: dict[str, Any] = {
        "version": adapter.version(),
        # the machine is shared: how busy it was when this queue was measured
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    measured = measure_queue(adapter, cluster, rounds=rounds, jobs=jobs, say=say)
    for workers, figure in measured.items():
        if "error" not in figure:
            clients = CLIENTS if workers >= CLIENTS else 1
            tps = limit[f"tps_{clients}_clients"]["median"]
            figure["ratio_to_limit"] = round(figure["jobs_per_s"]["median"] / tps, 3)
            figure["limit_clients"] = clients
        figures[f"{workers}_workers"] = figure
    return figures


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
                # each round's ratio: direct and proxied ran back to back
                "ratio": spread([p / d for p, d in zip(through, direct, strict=True)]),
            }
    return figures


# The report ------------------------------------------------------------------


def markdown(record: dict[str, Any]) -> str:
    """bench.md: every figure of a bench record, as tables."""
    m = record["machine"]
    lines = [
        "# Benchmark",
        "",
        (
            f"{m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
            f"{m['system']}, Python {m['python']}, load average "
            f"{' '.join(str(x) for x in m.get('load_average', []))} at the start; "
            f"Postgres from {record['postgres_bindir']}. Median of "
            f"{record['rounds']} rounds (lowest to highest)."
        ),
        "",
        "## The limit: pgbench single-row inserts, synchronous commit",
        "",
        "| clients | tps |",
        "|---|---|",
    ]
    for name, value in record["limit"].items():
        lines.append(f"| {name.split('_')[1]} | {_fmt(value)} |")
    lines += [
        "",
        "## Queues: empty jobs end to end",
        "",
        (
            f"{record.get('clients', CLIENTS)} clients enqueue, each job in an "
            "implicit transaction of its own (autocommit), like each insert of "
            "the limit. Jobs/s: the clients enqueue a batch as fast as they "
            "can; the rate at which the middle of the batch (from the 20th to "
            "the 80th percent of jobs, in the order they ended) ran, so that a "
            "wait for a poll before the first job or after the last does not "
            "count; batch jobs/s: from the first enqueue until all are done; "
            "of the limit: against pgbench with as many clients as workers (1 or "
            f"{CLIENTS}). Latency from an enqueue's commit to its job's start, "
            "with the clients enqueueing at half the jobs/s just measured. Queues "
            "are measured one after another on a shared machine: the load "
            "average says how busy it was at each one's start."
        ),
        "",
        (
            "| queue | workers | jobs/s | of the limit | batch jobs/s "
            "| start latency median (ms) | p99 (ms) | jobs per round | load average |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in record["queues"].items():
        if "unavailable" in figures:
            lines.append(
                f"| {name} | - | unavailable: {figures['unavailable']} | | | | | | |"
            )
            continue
        for workers in WORKER_COUNTS:
            f = figures.get(f"{workers}_workers", {})
            if "error" in f:
                lines.append(
                    f"| {name} | {workers} | error: {f['error']} | | | | | | |"
                )
                continue
            lines.append(
                f"| {name} {figures['version']} | {workers} | "
                f"{_fmt(f['jobs_per_s'])} | {f['ratio_to_limit']:.2f} | "
                f"{_fmt(f['batch_jobs_per_s'])} | "
                f"{_fmt(f['latency_median_ms'])} | {_fmt(f['latency_p99_ms'])} | "
                f"{'/'.join(str(n) for n in f['jobs_per_round'])} | "
                f"{figures.get('load_average_1m', '?')} |"
            )
    lines += [
        "",
        f"## The fault proxy, 1 client, rounds of {record.get('proxy_seconds', '?')} s",
        "",
        "| workload | direct tps | through the proxy | ratio |",
        "|---|---|---|---|",
    ]
    for name, f in record["proxy"].items():
        lines.append(
            f"| {name} | {_fmt(f['direct_tps'])} | {_fmt(f['proxy_tps'])} "
            f"| {_fmt(f['ratio'])} |"
        )
    h = record["harness"]
    lines += [
        "",
        "## The harness",
        "",
        f"- ledger: {_fmt(h['ledger_us_per_execution'])} µs per execution",
    ]
    for key, label in (("suite_serial", "serial"), ("suite_n2", "with -n 2")):
        if key in h:
            suite = h[key]
            verdict = "" if suite["passed"] else f" (failed: {suite['summary']})"
            lines.append(
                f"- `pytest scenarios/` {label}: {suite['seconds']} s{verdict}"
            )
    mutants = h.get("mutants")
    if mutants:
        lines.append(
            f"- time to catch each mutant (score {mutants['score']}, "
            f"from {mutants['report']}):"
        )
        for name, seconds in sorted(mutants["seconds"].items()):
            by = mutants.get("caught_by", {}).get(name)
            caught = f"{seconds} s by {by}" if seconds is not None else "not caught"
            lines.append(f"  - {name}: {caught}")
    else:
        lines.append(
            "- time to catch each mutant: no `queue-chaos mutants --json` "
            "report yet; run it first"
        )
    parts = ", ".join(f"{k} {v} s" for k, v in record.get("parts_s", {}).items())
    lines += ["", f"Whole benchmark: {record['wall_s']} s ({parts}).", ""]
    return "\n".join(lines)


def _fmt(value: dict[str, float]) -> str:
    return f"{value['median']:g} ({value['min']:g}–{value['max']:g})"
