"""The history: the single ordered record of a run's ops, kept in memory and on disk."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import ReportError, UsageError

__all__ = ["OP_TYPES", "History", "ledger_op", "ops_by_key", "story"]

OP_TYPES = ("invoke", "ok", "fail", "info")

_LEDGER_TYPES = {"start": "invoke", "ok": "ok", "fail": "fail"}
# Fields a story shows in this order after the op's f and type; others follow.
_STORY_FIELDS = ("n", "behaviour", "worker", "pid", "error", "fault", "targets")
_STORY_SKIPPED = {"t", "f", "type", "process", "key"}


def _check_op(op: object, *, stored: bool = False) -> dict[str, Any]:
    if not isinstance(op, dict):
        raise UsageError(f"history op {op!r} is not a dict")
    problems = []
    if not isinstance(op.get("f"), str) or not op.get("f"):
        problems.append("'f' must name what the op did (enqueue, execute, ...)")
    if op.get("type") not in OP_TYPES:
        problems.append(f"'type' must be one of {', '.join(OP_TYPES)}")
    if not isinstance(op.get("process"), str) or not op.get("process"):
        problems.append("'process' must name who did it (client-0, worker-2, ...)")
    t = op.get("t")
    if (t is not None or stored) and (isinstance(t, bool) or not isinstance(t, int)):
        problems.append("'t' must be an integer of monotonic nanoseconds")
    if problems:
        raise UsageError(f"history op {op!r} is malformed: {'; '.join(problems)}")
    return op


def ledger_op(record: dict[str, Any]) -> dict[str, Any]:
    """The ``execute`` op for one ledger record (start → invoke, ok, fail)."""
    op: dict[str, Any] = {
        "t": record["t"],
        "process": record["worker"],
        "f": "execute",
        "type": _LEDGER_TYPES[record["event"]],
        "key": record["key"],
        "n": record["n"],
        "pid": record["pid"],
        "worker": record["worker"],
    }
    if record.get("error") is not None:
        op["error"] = record["error"]
    return op


def ops_by_key(ops: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ops that concern a job (enqueue, execute), grouped by key, order kept."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for op in ops:
        key = op.get("key")
        if key is not None:
            grouped.setdefault(key, []).append(op)
    return grouped


def story(ops: Iterable[dict[str, Any]], *, start_ns: int | None = None) -> str:
    """A readable account of ops in order: ms since ``start_ns``, process, op.

    ``start_ns`` is the run's start; without it, times count from the first op.
    """
    ops = sorted(ops, key=lambda op: op["t"])
    if not ops:
        return "(no ops)"
    origin_ns = ops[0]["t"] if start_ns is None else start_ns
    keys = {op.get("key") for op in ops}
    lines = [f"job {keys.pop()}"] if len(keys) == 1 and None not in keys else []
    width = max(len(op["process"]) for op in ops)
    for op in ops:
        ms = (op["t"] - origin_ns) / 1e6
        what = f"{op['f']} {op['type']}"
        fields = [name for name in _STORY_FIELDS if op.get(name) is not None]
        if op.get("worker") == op["process"]:
            fields.remove("worker")
        fields += sorted(
            name
            for name in op
            if name not in _STORY_SKIPPED
            and name not in _STORY_FIELDS
            and op[name] is not None
        )
        details = " ".join(f"{name}={_show(op[name])}" for name in fields)
        line = f"  {ms:9.1f} ms  {op['process']:<{width}}  {what:<14}  {details}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value:
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return repr(value)


class History:
    """Thread-safe record of a run's ops, optionally streamed to ``history.jsonl``.

    Each op is a flat dict (see docs/architecture.md); ``t`` is filled with
    ``time.monotonic_ns()`` when absent.  With ``path``, every op is written
    and flushed as one JSON line the moment it is appended, so an interrupted
    run keeps everything it recorded.  ``complete`` is False for a history
    loaded from a file whose last line was torn.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.complete = True
        self._ops: list[dict[str, Any]] = []
        self._ledger_seen: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()
        self._file = None
        if self.path is not None:
            try:
                self._file = open(self.path, "x", encoding="utf-8")
            except FileExistsError:
                raise ReportError(
                    f"history file {self.path} exists already; "
                    "each run records into a directory of its own"
                ) from None

    def __repr__(self) -> str:
        where = "" if self.path is None else f" at {str(self.path)!r}"
        return f"<History of {len(self._ops)} ops{where}>"

    def __len__(self) -> int:
        return len(self._ops)

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def append(self, op: dict[str, Any]) -> dict[str, Any]:
        """Record ``op`` (a copy, with ``t`` filled in) and return the copy."""
        op = dict(_check_op(op))
        if op.get("t") is None:
            op["t"] = time.monotonic_ns()
        with self._lock:
            self._ops.append(op)
            if self._file is not None:
                self._file.write(json.dumps(op, separators=(",", ":"), default=str))
                self._file.write("\n")
                self._file.flush()
        return op

    def add_ledger(self, records: Iterable[dict[str, Any]]) -> int:
        """Add ledger records as ``execute`` ops; return how many were new.

        Records already added are skipped, so a growing ledger can be read and
        added again and again during a run.
        """
        added = 0
        for record in records:
            identity = (record["pid"], record["key"], record["n"], record["event"])
            with self._lock:
                if identity in self._ledger_seen:
                    continue
                self._ledger_seen.add(identity)
            self.append(ledger_op(record))
            added += 1
        return added

    def ops(self) -> list[dict[str, Any]]:
        """Every op, sorted by ``t``; ops with equal ``t`` keep their order."""
        with self._lock:
            ops = list(self._ops)
        return sorted(ops, key=lambda op: op["t"])

    def by_key(self) -> dict[str, list[dict[str, Any]]]:
        """The ops of each job key, sorted by ``t``."""
        return ops_by_key(self.ops())

    @property
    def start_ns(self) -> int | None:
        """``t`` of the earliest op: the run's start as far as the history knows."""
        with self._lock:
            return min((op["t"] for op in self._ops), default=None)

    def story(self, key: str) -> str:
        """The story of one job, timed from the start of the run."""
        return story(self.by_key().get(key, []), start_ns=self.start_ns)

    def close(self) -> None:
        """Stop streaming; the ops stay readable in memory."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        """The history recorded in ``path``.

        A torn last line (a run killed while writing) is dropped and reported
        as ``complete = False``; a broken line elsewhere is a ReportError.
        """
        history = cls()
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReportError(f"cannot read history file {path}: {exc}") from None
        lines = text.split("\n")
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                op = json.loads(line)
                _check_op(op, stored=True)
            except (ValueError, UsageError) as exc:
                if index == len(lines) - 1:
                    history.complete = False
                    continue
                raise ReportError(
                    f"history file {path} line {index + 1} is not an op: {exc}"
                ) from None
            if op["f"] == "execute":
                event = "start" if op["type"] == "invoke" else op["type"]
                history._ledger_seen.add(
                    (op.get("pid"), op.get("key"), op.get("n"), event)
                )
            history._ops.append(op)
        return history

