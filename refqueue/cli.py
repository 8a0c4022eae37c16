"""``python -m refqueue``: run a worker, install the schema, list the mutants."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any, NoReturn

import psycopg

from . import logs
from .connection import connect, describe_dsn
from .errors import ConfigError, RefQueueError
from .jobprocess import load_handler
from .jobs import Jobs, install
from .mutants import MUTANTS, jobs_for, selected, worker_class_for
from .worker import WorkerConfig

#: Exit status for unusable input: a bad option, handler, DSN or mutant.
EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="refqueue", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="claim and run jobs until SIGTERM")
    worker.add_argument("--dsn", required=True, help="libpq connection string")
    worker.add_argument(
        "--handler", required=True, help="module:function called as handler(args)"
    )
    worker.add_argument("--queue", default="default")
    worker.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
    worker.add_argument("--lease-s", type=float, default=5.0)
    worker.add_argument("--heartbeat-s", type=float, default=1.0)
    worker.add_argument("--job-timeout-s", type=float, default=30.0)
    worker.add_argument("--backoff-base-s", type=float, default=0.1)
    worker.add_argument("--backoff-max-s", type=float, default=2.0)
    worker.add_argument("--poll-s", type=float, default=0.5)
    worker.add_argument(
        "--grace-s",
        type=float,
        default=5.0,
        help="after SIGTERM, how long running jobs may take before they are released",
    )
    worker.add_argument(
        "--transactional",
        action="store_true",
        help="call handler(args, conn) and complete the job in that transaction",
    )
    worker.add_argument("--name", help="the worker's name in logs and in the job table")
    worker.add_argument(
        "--mutant", help="run a deliberately broken variant (see mutants)"
    )
    worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning"]
    )

    install = commands.add_parser("install", help="create the schema if absent")
    install.add_argument("--dsn", required=True, help="libpq connection string")

    commands.add_parser("mutants", help="list the deliberately broken variants")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; any ``RefQueueError`` becomes one line and exit status 2."""
    options = _parser().parse_args(argv)
    try:
        if options.command == "worker":
            return _worker(options)
        if options.command == "install":
            return _install(options)
        return _list_mutants()
    except RefQueueError as exc:
        print(f"refqueue {options.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _worker(options: argparse.Namespace) -> int:
    # Check everything before anything is started or created.
    config = WorkerConfig(
        dsn=options.dsn,
        handler=options.handler,
        queue=options.queue,
        concurrency=options.concurrency,
        lease_s=options.lease_s,
        heartbeat_s=options.heartbeat_s,
        job_timeout_s=options.job_timeout_s,
        backoff_base_s=options.backoff_base_s,
        backoff_max_s=options.backoff_max_s,
        poll_s=options.poll_s,
        grace_s=options.grace_s,
        transactional=options.transactional,
        mutant=selected(options.mutant),
    )
    if options.name:
        config = replace(config, name=options.name)
    config.check()
    load_handler(config.handler)
    conn = _connect_to_installed_queue(config.dsn)

    logs.configure(options.log_level, {"worker": config.name})
    worker = worker_class_for(config.mutant)(config, jobs_for(config.mutant), conn)
    worker.run()
    return 0


def _install(options: argparse.Namespace) -> int:
    with _connect_checked(options.dsn) as conn:
        install(conn)
    return 0


def _list_mutants() -> int:
    for name, mutant in sorted(MUTANTS.items()):
        print(f"{name:28} {mutant.failure_case}  {mutant.description}")
    return 0


def _connect_checked(dsn: str) -> psycopg.Connection[Any]:
    try:
        return connect(dsn)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(
            f"cannot connect to --dsn {describe_dsn(dsn)}: {reason}; "
            "check that the server is running and that the DSN names it"
        ) from None


def _connect_to_installed_queue(dsn: str) -> psycopg.Connection[Any]:
    conn = _connect_checked(dsn)
    row = conn.execute(Jobs().queries["schema_installed"].text).fetchone()
    if not row or not row[0]:
        conn.close()
        raise ConfigError(
            f"the database of --dsn {describe_dsn(dsn)} has no refqueue schema: "
            "run `python -m refqueue install --dsn DSN` first"
        )
    return conn
