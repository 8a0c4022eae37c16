"""Adapters whose queue library runs in a virtual environment of its own.

The harness process enqueues and reads the final state with plain SQL over
the library's documented tables (psycopg 3, inside the caller's
transaction); the library itself is imported only by the worker script,
`_workers/<library>_worker.py`, run by the environment's interpreter
(`python -m harness.adapters._workers.<library>_worker`). The
script has two commands: `install` creates the library's schema the way its
documentation says, `worker` starts the library's own worker with a task
that runs `harness.jobs.execute`.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import psycopg

from harness import envs
from harness.adapters._sql import queries
from harness.adapters.base import Adapter, Semantics
from harness.checker import JobState
from harness.errors import AdapterError

log = logging.getLogger("queue_chaos.adapters")

INSTALL_TIMEOUT_S = 120.0
# The queue and task every library adapter enqueues harness jobs under.
QUEUE = "queue_chaos"
TASK = "queue_chaos_job"


class VenvAdapter(Adapter):
    """A queue library driven through its own environment and worker script.

    Subclasses set `name`, `library`, `default_version`, `requirements`,
    `imports`, `python_min`, `semantics` and `configured` (one line per
    setting the adapter had to choose), and implement `enqueue` and
    `_rows` (the library's rows of the given keys as JobStates).
    """

    default_version: str = ""
    requirements: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    python_min: tuple[int, int] = (3, 11)
    extras: str = ""
    #: What the adapter had to set, one line each; goes into the scorecard.
    configured: tuple[str, ...] = ()
    semantics: Semantics

    def __init__(self, version: str | None = None) -> None:
        self.pinned = version or self.default_version
        if version and version != self.default_version:
            self.name = f"{type(self).name}=={version}"
        self.spec = envs.EnvSpec(
            adapter=type(self).name,
            library=self.library,
            version=self.pinned,
            requirements=self.requirements,
            imports=self.imports,
            python_min=self.python_min,
            extras=self.extras,
        )

    @property
    def sql(self) -> dict[str, str]:
        return queries(self.library.replace("-", "_"))

    def unavailable(self) -> str | None:
        return envs.missing_python(self.spec)

    def version(self) -> str:
        return self.pinned

    def env_ready(self) -> bool:
        return envs.ready(self.spec)

    def ensure_env(self) -> Path:
        """The environment's interpreter, creating the environment if need be."""
        return envs.create(self.spec)

    def script(self) -> list[str]:
        """How the environment's interpreter runs the worker script."""
        module = f"{self.library.replace('-', '_')}_worker"
        return ["-m", f"harness.adapters._workers.{module}"]

    def install(self, dsn: str) -> None:
        python = self.ensure_env()
        command = [str(python), *self.script(), "install", "--dsn", dsn]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise AdapterError(
                f"adapter {self.name}: schema install did not end within "
                f"{INSTALL_TIMEOUT_S:g} s"
            ) from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise AdapterError(
                f"adapter {self.name}: schema install failed: {lines[-1]}"
            )

    def worker_command(self, dsn: str, worker: str) -> list[str]:
        return [
            str(envs.python_of(self.spec)), *self.script(), "worker",
            "--dsn", dsn, "--name", worker,
        ]

    def snapshot(self, dsn: str, keys: list[str]) -> dict[str, JobState]:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            rows = self._rows(conn, keys)
        return {key: rows.get(key, JobState("missing", 0)) for key in keys}

    def _rows(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, JobState]:
        raise NotImplementedError
