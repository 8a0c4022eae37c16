"""Entry point: ``python -m harness.netfault`` runs the fault proxy server."""

import sys

from harness.netfault.server import main

sys.exit(main())
