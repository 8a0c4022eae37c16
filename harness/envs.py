"""Virtual environments of queue libraries, created on demand from pinned requirements.

Queue libraries pin conflicting versions of their dependencies, so each
adapter's workers run in a virtual environment of their own, under
`.venvs/<adapter>-<version>/` beside the harness (or `QUEUE_CHAOS_ENVS`). An
environment is built in a temporary folder and renamed into place only once
its library imports, so a failed or interrupted build leaves nothing half
made; a lock file keeps two processes from building the same one at once.
The harness itself is put on the environment's path by a `.pth` file, so the
job body `harness.jobs:execute` imports there without installing queue-chaos.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import harness
from harness.errors import AdapterError, UsageError

__all__ = ["ENVS_ENV", "EnvSpec", "create", "envs_dir", "find_python", "python_of"]

log = logging.getLogger("queue_chaos.envs")

ENVS_ENV = "QUEUE_CHAOS_ENVS"
MARKER = "queue-chaos-env.json"
PTH_NAME = "queue_chaos_harness.pth"
INSTALL_TIMEOUT_S = 900.0
IMPORT_TIMEOUT_S = 120.0

_VERSION = re.compile(r"[0-9][0-9A-Za-z.+!-]*", re.ASCII)


@dataclass(frozen=True)
class EnvSpec:
    """What one adapter's environment holds: its library, pinned, and the rest.

    ``requirements`` are further pip requirement strings installed with the
    library; ``imports`` are the modules that must import for the environment
    to count as made; ``python_min`` is the oldest interpreter the library
    supports, as (major, minor).
    """

    adapter: str
    library: str
    version: str
    requirements: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    python_min: tuple[int, int] = (3, 11)
    extras: str = ""

    def __post_init__(self) -> None:
        if not _VERSION.fullmatch(self.version):
            raise UsageError(
                f"version {self.version!r} of {self.library} is not a version "
                f"number; write e.g. --adapter {self.adapter}==1.2.3"
            )

    @property
    def pins(self) -> list[str]:
        """Every requirement handed to pip, the library's own first."""
        extras = f"[{self.extras}]" if self.extras else ""
        return [f"{self.library}{extras}=={self.version}", *self.requirements]

    @property
    def folder_name(self) -> str:
        return f"{self.adapter}-{self.version}"


def envs_dir() -> Path:
    """Where environments live: `QUEUE_CHAOS_ENVS`, else `.venvs` beside the harness."""
    configured = os.environ.get(ENVS_ENV)
    if configured:
        return Path(configured)
    return _harness_root() / ".venvs"


def _harness_root() -> Path:
    """The folder that holds the `harness` package (the repository, when editable)."""
    return Path(harness.__file__).resolve().parent.parent


def find_python(minimum: tuple[int, int]) -> Path | None:
    """An interpreter at least as new as `minimum`: this one first, then others.

    Looked for: the running interpreter, pyenv's versions
    (`$PYENV_ROOT/versions/3.N.*`), then `python3.N` on PATH (not a pyenv
    shim), oldest suitable minor first.
    """
    if sys.version_info[:2] >= minimum:
        return Path(sys.executable)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for minor in range(minimum[1], 30):
        if (3, minor) < minimum:
            continue
        pattern = str(pyenv / "versions" / f"3.{minor}.*" / "bin" / "python")
        for candidate in sorted(glob.glob(pattern), reverse=True):
            if os.access(candidate, os.X_OK):
                return Path(candidate)
        found = shutil.which(f"python3.{minor}")
        # a pyenv shim answers for versions that are not installed
        if found and "/shims/" not in found:
            return Path(found)
    return None


def python_of(spec: EnvSpec) -> Path:
    """The interpreter of the spec's environment (which may not exist yet)."""
    return envs_dir() / spec.folder_name / "bin" / "python"


def ready(spec: EnvSpec) -> bool:
    """Whether the environment exists, was made from these pins and sees the harness."""
    marker = _read_marker(envs_dir() / spec.folder_name)
    return (
        marker is not None
        and marker.get("pins") == spec.pins
        and marker.get("harness_root") == str(_harness_root())
    )


def missing_python(spec: EnvSpec) -> str | None:
    """Why no interpreter can host the spec's library here, or None."""
    if find_python(spec.python_min) is not None:
        return None
    wanted = ".".join(map(str, spec.python_min))
    return (
        f"{spec.library} needs Python >= {wanted}; none was found (this is "
        f"{sys.version_info.major}.{sys.version_info.minor}; looked on PATH "
        "and in pyenv)"
    )


def create(spec: EnvSpec) -> Path:
    """Make the spec's environment unless it exists; return its interpreter.

    Idempotent and atomic: a finished environment is left as it is; a new one
    is built in a temporary folder and renamed into place. AdapterError names
    the adapter and the reason when the library cannot be installed or
    imported.
    """
    final = envs_dir() / spec.folder_name
    if ready(spec):
        return final / "bin" / "python"
    reason = missing_python(spec)
    if reason:
        raise AdapterError(f"adapter {spec.adapter}: {reason}")
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{spec.folder_name}.lock"):
        if ready(spec):
            return final / "bin" / "python"
        _build(spec, final)
    return final / "bin" / "python"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(spec: EnvSpec, final: Path) -> None:
    base = find_python(spec.python_min)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.folder_name}-", dir=final.parent))
    log.info("environment build started",
             extra={"adapter": spec.adapter, "pins": spec.pins, "python": str(base)})
    try:
        _step(spec, [str(base), "-m", "venv", str(tmp)], "create a venv")
        python = tmp / "bin" / "python"
        _step(
            spec,
            [str(python), "-m", "pip", "install", "--no-input", "--quiet",
             "--disable-pip-version-check", *spec.pins],
            "install " + " ".join(spec.pins),
            timeout_s=INSTALL_TIMEOUT_S,
        )
        purelib = subprocess.run(
            [str(python), "-c",
             "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        (Path(purelib) / PTH_NAME).write_text(str(_harness_root()) + "\n")
        modules = ", ".join(("harness.jobs", *spec.imports))
        _step(spec, [str(python), "-c", f"import {modules}"], f"import {modules}",
              timeout_s=IMPORT_TIMEOUT_S)
        marker = {"adapter": spec.adapter, "library": spec.library,
                  "version": spec.version, "pins": spec.pins,
                  "python": str(base), "harness_root": str(_harness_root())}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("environment built", extra={"adapter": spec.adapter, "path": str(final)})


def _replace(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an outdated final is moved aside first, then removed.

    A venv's interpreter finds its prefix from its own location, so a renamed
    venv works as long as it is run as `bin/python -m ...`.
    """
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _step(
    spec: EnvSpec, command: list[str], what: str, *, timeout_s: float = 300.0
) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise AdapterError(
            f"adapter {spec.adapter}: could not {what} within {timeout_s:g} s"
        ) from None
    if done.returncode != 0:
        raise AdapterError(
            f"adapter {spec.adapter}: could not {what}: "
            f"{_last_line(done.stderr or done.stdout)}"
        )


def _last_line(text: str) -> str:
    """The most telling line of a tool's error output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR:") or "Error" in line:
            return line
    return lines[-1] if lines else "no output"


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
