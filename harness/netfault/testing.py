"""Real TCP peers and socket helpers for testing what the fault proxy does."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


class EchoServer:
    """A threaded TCP server on loopback that sends back what it receives.

    When a client ends its stream, the server ends its own and closes.
    ``accepted`` counts the connections it took.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.accepted = 0
        self._peers: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._accept_loop, name="echo-accept", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            peers = list(self._peers)
        for peer in peers:
            with contextlib.suppress(OSError):
                peer.shutdown(socket.SHUT_RDWR)
            peer.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                peer, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._peers.add(peer)
            threading.Thread(
                target=self._echo, args=(peer,), name="echo-peer", daemon=True
            ).start()

    def _echo(self, peer: socket.socket) -> None:
        try:
            while data := peer.recv(65536):
                peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client reset the connection, or the server is closing
        finally:
            with self._lock:
                self._peers.discard(peer)
            peer.close()


def wait_until(predicate: Callable[[], object], *, timeout_s: float, what: str) -> None:
    """Poll predicate until it is true; AssertionError naming what after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.005)


def dial(address: str, *, timeout_s: float = 5.0) -> socket.socket:
    """A connected client socket to "host:port" with timeout_s on each call."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly size bytes; AssertionError if the stream ends first."""
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise AssertionError(f"stream ended after {len(data)} of {size} bytes")
        data += piece
    return data


def recv_until_closed(sock: socket.socket) -> tuple[bytes, int]:
    """Read until the peer ends the stream: the bytes and the number of reads."""
    data = b""
    reads = 0
    while piece := sock.recv(65536):
        data += piece
        reads += 1
    return data, reads


def round_trip_s(sock: socket.socket, payload: bytes = b"ping") -> float:
    """Send payload to an echo peer and time until all of it is back."""
    start = time.monotonic()
    sock.sendall(payload)
    if recv_exactly(sock, len(payload)) != payload:
        raise AssertionError("the echo came back changed")
    return time.monotonic() - start
