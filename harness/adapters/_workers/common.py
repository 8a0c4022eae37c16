"""What every worker script shares: its command line, logging and stop signals."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable

from harness.jobs import execute

__all__ = ["execute", "main", "on_sigterm"]


def main(install: Callable[[str], None], worker: Callable[[str, str], None]) -> None:
    """Parse `install --dsn DSN` or `worker --dsn DSN --name NAME` and run it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("install", "worker"))
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--name", default=os.environ.get("QUEUE_CHAOS_WORKER", "w"))
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "install":
        install(args.dsn)
    else:
        logging.getLogger("queue_chaos.worker").info(
            "worker starting", extra={"worker": args.name}
        )
        worker(args.dsn, args.name)


def on_sigterm(stop: Callable[[], None]) -> None:
    """Call stop on SIGTERM, the way a deployment asks a worker to finish."""
    signal.signal(signal.SIGTERM, lambda signum, frame: stop())
