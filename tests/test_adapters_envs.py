"""Environments of queue libraries: bad versions, missing interpreters, atomicity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import envs
from harness.adapters import get_adapter
from harness.errors import AdapterError, UsageError


def queue_chaos(*args: str, envs_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, envs.ENVS_ENV: str(envs_dir)},
    )


@pytest.mark.slow
def test_env_create_of_a_version_that_does_not_exist_says_so_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    done = queue_chaos("env", "create", "pgqueuer==0.0.999", envs_dir=tmp_path)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "adapter pgqueuer" in lines[0]
    assert "pgqueuer==0.0.999" in lines[0]
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_env_create_of_an_unknown_adapter_is_one_line_and_status_2(
    tmp_path: Path,
) -> None:
    done = queue_chaos("env", "create", "no-such-queue", envs_dir=tmp_path)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "queue-chaos: unknown adapter 'no-such-queue'; `queue-chaos adapters` "
        "lists the known ones"
    ]


def test_a_version_that_is_not_a_version_number_is_refused() -> None:
    with pytest.raises(UsageError, match="not a version number"):
        get_adapter("pgqueuer==latest; rm -rf")


def test_an_empty_version_is_refused() -> None:
    with pytest.raises(UsageError, match="names no version"):
        get_adapter("pgqueuer==")


def test_a_library_that_needs_a_newer_python_than_any_here_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(envs.ENVS_ENV, str(tmp_path))
    spec = envs.EnvSpec("future", "future-queue", "1.0", python_min=(3, 99))

    reason = envs.missing_python(spec)
    with pytest.raises(AdapterError) as raised:
        envs.create(spec)

    assert reason is not None and "Python >= 3.99" in reason
    assert str(raised.value) == f"adapter future: {reason}"
    assert list(tmp_path.iterdir()) == []


def test_an_environment_made_from_other_pins_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(envs.ENVS_ENV, str(tmp_path))
    spec = envs.EnvSpec("x", "x-queue", "1.0", requirements=("a",))
    folder = tmp_path / spec.folder_name
    folder.mkdir()
    (folder / envs.MARKER).write_text(
        '{"pins": ["x-queue==1.0", "b"], "harness_root": "%s"}'
        % envs._harness_root()
    )

    assert not envs.ready(spec)
