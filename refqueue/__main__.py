"""``python -m refqueue``: the worker and the other commands of refqueue.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
