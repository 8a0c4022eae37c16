"""The ledger: what job bodies write while they run, crash-safe across processes."""

from __future__ import annotations

import errno
import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from harness.errors import ReportError, UsageError

__all__ = ["ENV_LEDGER", "Ledger"]

ENV_LEDGER = "QUEUE_CHAOS_LEDGER"

_OUTCOMES = ("ok", "fail")
_MAX_KEY_BYTES = 200
# A record stays one small write; a longer error text is cut, not split.
_MAX_ERROR_CHARS = 2000

# One append-only file per process and ledger directory, shared by every
# Ledger object of that process, so a worker that builds a Ledger per job
# still writes a single file.  A forked child sees a different pid and opens
# its own file rather than writing into its parent's.
_writers: dict[str, tuple[int, int]] = {}
_writers_lock = threading.Lock()

# Per process and ledger directory, the empty file whose hard links are the
# ordinal files (see Ledger.claim); None where the file system has no hard links.
_link_sources: dict[str, tuple[int, str | None]] = {}

# Ordinals directories this process has made sure exist; a worker builds a
# Ledger per job, and a mkdir that fails with EEXIST costs an exception each time.
_ordinals_made: set[str] = set()

# One encoder for every record: json.dumps with separators builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _reset_after_fork() -> None:
    global _writers_lock
    _writers_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _check_key(key: object) -> str:
    ok = (
        isinstance(key, str)
        and key
        and not key.startswith(".")
        and "/" not in key
        and "\0" not in key
        and len(key.encode()) <= _MAX_KEY_BYTES
    )
    if not ok:
        raise UsageError(
            f"job key {key!r} cannot be used in the ledger; a key is a non-empty "
            f"string of at most {_MAX_KEY_BYTES} bytes without '/' or NUL that "
            "does not start with '.'"
        )
    return key


class Ledger:
    """Append-only record of executions, written by job bodies as they run.

    Each process appends JSON lines to its own ``<pid>-<random>.jsonl`` with
    one ``os.write`` per record on an ``O_APPEND`` descriptor and no buffer in
    between: a SIGKILLed writer loses nothing already written, a SIGSTOPped one
    holds no lock anyone waits on.  The ordinal of an execution is claimed by
    creating ``ordinals/<key>.<n>`` exclusively (see docs/architecture.md and
    ``claim``).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._directory = os.fspath(directory)
        self._ordinals = os.path.join(self._directory, "ordinals")
        if self._ordinals not in _ordinals_made:
            self._make_ordinals_directory()
        # Highest ordinal this process claimed per key: every n up to it is
        # taken, so the next claim need not look there again.
        self._claimed: dict[str, int] = {}
        self.torn_lines = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ledger:
        """The ledger named by ``QUEUE_CHAOS_LEDGER``, as a worker process sees it."""
        environ = os.environ if environ is None else environ
        directory = environ.get(ENV_LEDGER)
        if not directory:
            raise UsageError(
                f"{ENV_LEDGER} is not set; a job body must run in a worker started "
                "by the harness, or with that variable naming a ledger directory"
            )
        return cls(directory)

    def __repr__(self) -> str:
        return f"Ledger({str(self.directory)!r})"

    def start(self, key: str, *, worker: str) -> int:
        """Claim this execution's ordinal for ``key``, record its start, return n."""
        n = self.claim(key)
        self._append({"key": key, "n": n, "event": "start", "worker": worker})
        return n

    def finish(
        self,
        key: str,
        n: int,
        outcome: str,
        *,
        worker: str,
        error: str | None = None,
    ) -> None:
        """Record that execution ``n`` of ``key`` ended with ``outcome`` (ok / fail)."""
        _check_key(key)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"execution ordinal {n!r} must be an integer >= 1")
        if outcome not in _OUTCOMES:
            raise UsageError(
                f"execution outcome {outcome!r} is not one of {', '.join(_OUTCOMES)}"
            )
        record: dict[str, object] = {
            "key": key,
            "n": n,
            "event": outcome,
            "worker": worker,
        }
        if error is not None:
            record["error"] = error[:_MAX_ERROR_CHARS]
        self._append(record)

    def claim(self, key: str) -> int:
        """The ordinal of a new execution of ``key``: exact under any concurrency.

        Claimed ordinals always form a prefix 1..m, because n is only tried
        after n - 1 was seen to exist; so the first free one can be found by
        galloping and bisection over existence, then taken by creating its
        name exclusively.  A lost race only moves the attempt one further.
        """
        _check_key(key)
        # The next ordinal after this process's last one is usually free.
        n = self._claimed.get(key, 0) + 1
        if not self._create_exclusively(self._ordinal_path(key, n)):
            n = self._first_free(key, n + 1)
            while not self._create_exclusively(self._ordinal_path(key, n)):
                n += 1
        self._claimed[key] = n
        return n

    def read(self) -> list[dict]:
        """Every record of every process, sorted by ``t``.

        A last line without its newline is what a writer killed in mid-write
        can leave; it is skipped and counted in ``torn_lines``.  A broken line
        anywhere else is not something a crash can produce, so it is an error.
        """
        records: list[dict] = []
        torn = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            data = path.read_bytes()
            lines = data.split(b"\n")
            for index, line in enumerate(lines):
                if not line:
                    continue
                last = index == len(lines) - 1
                try:
                    records.append(json.loads(line))
                except ValueError:
                    if last:
                        torn += 1
                        continue
                    raise ReportError(
                        f"ledger file {path} has a broken record on line {index + 1}; "
                        "only the last line of a killed writer may be incomplete"
                    ) from None
        self.torn_lines = torn
        records.sort(key=lambda record: record["t"])
        return records

    def unfinished(self) -> dict[tuple[str, int], dict]:
        """The start record of each execution that has not recorded its end.

        Keyed by (key, n). An execution still running is here, and so is one
        whose process was killed: a killed execution never writes its end.
        """
        started: dict[tuple[str, int], dict] = {}
        for record in self.read():
            execution = (record["key"], record["n"])
            if record["event"] == "start":
                started[execution] = record
            else:
                started.pop(execution, None)
        return started

    def _ordinal_path(self, key: str, n: int) -> str:
        return os.path.join(self._ordinals, f"{key}.{n}")

    def _create_exclusively(self, path: str) -> bool:
        """Create the empty file ``path``; False if it exists already.

        The name is a new hard link to this process's empty source file where
        the file system allows it: like ``O_CREAT | O_EXCL``, ``link`` fails
        when the name exists, atomically, but it allocates no inode, which on
        ext4 costs hundreds of microseconds of CPU per file.
        """
        source = self._link_source()
        for _ in range(2):
            if source is None:
                return _create_file_exclusively(path)
            try:
                os.link(source, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EMLINK, errno.ENOENT):
                    # The source has all the links it can, or it was removed
                    # with the ledger directory: make them again.
                    if exc.errno == errno.ENOENT:
                        self._make_ordinals_directory()
                    source = self._new_link_source()
                    continue
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # No hard links here: create each ordinal file with O_EXCL.
                _link_sources[self._directory] = (os.getpid(), None)
                source = None
                continue
            return True
        return _create_file_exclusively(path)

    def _make_ordinals_directory(self) -> None:
        os.makedirs(self._ordinals, exist_ok=True)
        _ordinals_made.add(self._ordinals)

    def _link_source(self) -> str | None:
        entry = _link_sources.get(self._directory)
        if entry is not None and entry[0] == os.getpid():
            return entry[1]
        return self._new_link_source()

    def _new_link_source(self) -> str:
        # A hidden name, so that neither ``read`` nor the ordinals see it.
        path = os.path.join(
            self._directory, f".{os.getpid()}-{secrets.token_hex(4)}.ordinal"
        )
        os.close(
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        )
        _link_sources[self._directory] = (os.getpid(), path)
        return path

    def _first_free(self, key: str, low: int) -> int:
        # Invariant: every ordinal below `low` is taken; `high` was seen free.
        if not os.path.exists(self._ordinal_path(key, low)):
            return low
        step = 1
        high = low + step
        while os.path.exists(self._ordinal_path(key, high)):
            low = high + 1
            step *= 2
            high = low + step
        while low < high:
            middle = (low + high) // 2
            if os.path.exists(self._ordinal_path(key, middle)):
                low = middle + 1
            else:
                high = middle
        return low

    def _append(self, fields: dict[str, object]) -> None:
        record = {"t": time.monotonic_ns(), **fields, "pid": os.getpid()}
        line = (_ENCODER.encode(record) + "\n").encode()
        fd = self._writer_fd()
        written = os.write(fd, line)
        # One write in practice; a short write is finished rather than lost,
        # which is safe because nobody else appends to this process's file.
        view = memoryview(line)[written:]
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _writer_fd(self) -> int:
        directory = self._directory
        pid = os.getpid()
        with _writers_lock:
            entry = _writers.get(directory)
            if entry is not None and entry[0] == pid:
                return entry[1]
            name = f"{pid}-{secrets.token_hex(4)}.jsonl"
            fd = os.open(
                os.path.join(directory, name),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                0o644,
            )
            _writers[directory] = (pid, fd)
            return fd


def _create_file_exclusively(path: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True
