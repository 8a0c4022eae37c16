"""Starting and stopping the embedded fault proxy as a child process."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from harness.errors import ProxyError
from harness.netfault.client import ToxiproxyClient
from harness.netfault.errors import ProxyUnreachable

log = logging.getLogger("queue_chaos.netfault")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel SIGKILL the child when we die.

    libc is loaded here, before the fork: loading a library in the child of a
    threaded parent can deadlock. The death signal follows the thread that
    forked, so start the server from a thread that lives as long as it should.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None  # not Linux: the child outlives a killed parent
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent died before the death signal was armed

    return preexec


class EmbeddedProxyServer:
    """A running ``python -m harness.netfault`` child process."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, seed: int):
        self.process = process
        self.url = url
        self.seed = seed

    def __repr__(self) -> str:
        return f"<EmbeddedProxyServer {self.url} pid={self.pid} seed={self.seed}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    def __enter__(self) -> EmbeddedProxyServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self, *, timeout_s: float = 5.0) -> ToxiproxyClient:
        """A client of this server; closing it leaves the server running."""
        return ToxiproxyClient(self.url, timeout_s=timeout_s)

    def stop(self, *, timeout_s: float = 5.0) -> int:
        """SIGTERM, then SIGKILL with a warning after timeout_s; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "fault proxy killed after terminate timeout",
                    extra={"pid": self.pid, "timeout_s": timeout_s},
                )
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def _read_announcement(process: subprocess.Popen[bytes], deadline: float) -> dict:
    """The JSON first line of the child's stdout, read before the deadline."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or not selector.select(remaining_s):
                raise ProxyError(
                    f"fault proxy (pid {process.pid}) did not announce its address "
                    "in time; the machine may be overloaded, raise "
                    "startup_timeout_s"
                )
            data = os.read(fd, 4096)
            if not data:
                status = process.wait()
                raise ProxyError(
                    f"fault proxy exited with status {status} before announcing "
                    "its address; its stderr says why"
                )
            buffer += data
    line = buffer.split(b"\n", 1)[0]
    try:
        return json.loads(line)
    except ValueError:
        raise ProxyError(
            f"fault proxy announced {line!r} instead of JSON with its address"
        ) from None


def start_server(
    seed: int,
    *,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 15.0,
    allow_non_loopback: bool = False,
    log_level: str = "warning",
) -> EmbeddedProxyServer:
    """Start the fault proxy as a child process and wait until its API answers.

    The child listens on a free port of host, draws every random choice from
    seed, and is SIGKILLed by the kernel if this process dies.
    """
    command = [
        sys.executable,
        "-m",
        "harness.netfault",
        "--host",
        host,
        "--port",
        "0",
        "--seed",
        str(seed),
        "--log-level",
        log_level,
    ]
    if allow_non_loopback:
        command.append("--allow-non-loopback")
    deadline = time.monotonic() + startup_timeout_s
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        preexec_fn=_die_with_parent(),
    )

    try:
        url = str(_read_announcement(process, deadline)["api"])
        server = EmbeddedProxyServer(process, url, seed)
        _wait_until_answering(server.client(timeout_s=1.0), deadline)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise

    log.info(
        "fault proxy started", extra={"url": url, "pid": process.pid, "seed": seed}
    )
    return server


def _wait_until_answering(client: ToxiproxyClient, deadline: float) -> None:
    while True:
        try:
            client.version()
            return
        except ProxyUnreachable:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def connect(
    url: str | None = None, *, seed: int = 0, timeout_s: float = 5.0
) -> ToxiproxyClient:
    """A client of the fault proxy to use: url, else TOXIPROXY_URL, else embedded.

    With a URL (given or from TOXIPROXY_URL) the server must answer now. Without
    one, an embedded server is started with seed; the returned client owns it,
    and its ``close()`` stops it.
    """
    name = "url"
    if url is None:
        url = os.environ.get("TOXIPROXY_URL") or None
        name = "TOXIPROXY_URL"
    if url is None:
        server = start_server(seed)
        return ToxiproxyClient(server.url, timeout_s=timeout_s, server=server)

    client = ToxiproxyClient(url, timeout_s=timeout_s)
    try:
        client.version()
    except ProxyError as exc:
        reason = exc.reason if isinstance(exc, ProxyUnreachable) else str(exc)
        fix = "unset it" if name == "TOXIPROXY_URL" else "pass another url"
        raise ProxyUnreachable(
            f"{name}={url} does not answer; start Toxiproxy there or {fix} ({reason})",
            reason=reason,
        ) from None
    return client
