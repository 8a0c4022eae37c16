"""The `queue-chaos` command line."""

from __future__ import annotations

import argparse
import sys

from harness import __version__
from harness.errors import QueueChaosError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="queue-chaos",
        description="Fault-injection harness for PostgreSQL job queues.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except QueueChaosError as exc:
        print(f"queue-chaos: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
