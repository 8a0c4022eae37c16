"""dramatiq-pg worker for the harness: the `dramatiq` command with a PostgresBroker."""

from __future__ import annotations

import os
import sys

from harness.adapters._workers.common import main

BROKER = "harness.adapters._workers.dramatiq_pg_broker"


def install(dsn: str) -> None:
    from dramatiq_pg import cli

    sys.argv = ["dramatiq-pg", "--dsn", dsn, "init"]
    cli.main()


def worker(dsn: str, name: str) -> None:
    from dramatiq import cli

    # the broker module, imported by each worker process, reads the DSN here
    os.environ["QUEUE_CHAOS_DRAMATIQ_DSN"] = dsn
    args = cli.make_argument_parser().parse_args(
        [BROKER, "--processes", "1", "--threads", "2",
         "--worker-shutdown-timeout", "5000"]
    )
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main(install, worker)
