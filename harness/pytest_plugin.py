"""Pytest plugin: options, Postgres fixtures and markers for queue scenarios.

Installed with queue-chaos (entry point `pytest11`), so a project's own tests
can use `pg_server` and `pg_dsn` too. Each pytest process (each xdist worker)
starts one ephemeral cluster and hands each test a fresh database from its
template.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from harness import postgres


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("queue-chaos")
    group.addoption(
        "--pg-dsn",
        default=os.environ.get(postgres.DSN_ENV),
        help="use this Postgres server instead of an ephemeral cluster "
        "(server faults are then refused); also QUEUE_CHAOS_PG_DSN",
    )
    group.addoption(
        "--adapter",
        action="append",
        default=None,
        help="queue adapter the scenarios run against (repeatable; default "
        "refqueue); `queue-chaos adapters` lists them",
    )
    group.addoption(
        "--seed",
        type=int,
        default=None,
        help="seed of every scenario run (default: a random seed per run, "
        "printed in each report)",
    )
    group.addoption(
        "--reports",
        default="reports",
        help="folder where scenario runs write their reports",
    )
    group.addoption(
        "--pg-bindir",
        default=os.environ.get(postgres.BINDIR_ENV),
        help="folder of the Postgres binaries; also QUEUE_CHAOS_PG_BINDIR",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter_name" in metafunc.fixturenames:
        names = metafunc.config.getoption("adapter") or ["refqueue"]
        metafunc.parametrize("adapter_name", names, scope="session")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM ends the session like Ctrl-C, so fixtures remove what they started.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def pg_server(
    pytestconfig: pytest.Config,
) -> Iterator[postgres.Cluster | postgres.ExternalServer]:
    """The Postgres server of this test process: an ephemeral cluster by default."""
    server = postgres.server_from_env(
        pytestconfig.getoption("pg_dsn"), pytestconfig.getoption("pg_bindir")
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_cluster(
    pg_server: postgres.Cluster | postgres.ExternalServer,
) -> postgres.Cluster:
    """The ephemeral cluster, for tests that fault the server itself."""
    if not pg_server.owned:
        pytest.skip(
            "server faults need an ephemeral cluster; this run uses --pg-dsn"
        )
    if not pg_server.running:
        pg_server.start()
    pg_server.thaw()
    return pg_server


@pytest.fixture
def pg_database(
    pg_server: postgres.Cluster | postgres.ExternalServer,
) -> Iterator[postgres.Database]:
    """A fresh, empty database for one test, dropped afterwards."""
    if pg_server.owned:
        if pg_server.frozen:
            pg_server.thaw()
        if not pg_server.running:
            pg_server.start()
    database = pg_server.create_database()
    try:
        yield database
    finally:
        if pg_server.owned and (pg_server.frozen or not pg_server.running):
            pg_server.thaw()
            pg_server.start()
        pg_server.drop_database(database.name)


@pytest.fixture
def pg_dsn(pg_database: postgres.Database) -> str:
    """The DSN of a fresh, empty database for one test."""
    return pg_database.dsn


@pytest.fixture(scope="session")
def network(
    pg_server: postgres.Cluster | postgres.ExternalServer,
) -> Iterator[object]:
    """The fault proxies of this test process, in front of its server."""
    from harness.network import Network

    net = Network.start(pg_server, seed=0)
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def run_scenario(
    request: pytest.FixtureRequest,
    pg_server: postgres.Cluster | postgres.ExternalServer,
):
    """Run a scenario of the catalogue here; returns its RunResult.

    `run_scenario("f3-worker-killed", adapter="refqueue:delete_on_claim")`;
    scenarios with network faults get the session's fault proxies.
    """
    from harness.runner import run_scenario as run
    from harness.scenarios import get_scenario

    config = request.config

    def play(name: str, *, adapter: str = "refqueue", **options: object):
        scenario = get_scenario(name)
        if scenario.needs_server and not pg_server.owned:
            pytest.skip(f"{name} faults the server; this run uses --pg-dsn")
        if pg_server.owned:
            pg_server.thaw()
            pg_server.start()
        net = request.getfixturevalue("network") if scenario.needs_network else None
        options.setdefault("seed", config.getoption("seed"))
        return run(
            scenario, adapter=adapter, server=pg_server,
            reports_dir=config.getoption("reports"), network=net, **options,
        )

    return play
