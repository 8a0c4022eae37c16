"""Errors of the fault proxy client, each a ProxyError named for what went wrong."""

from __future__ import annotations

from harness.errors import ProxyError


class ProxyRequestFailed(ProxyError):
    """The proxy API answered with an error status.

    ``status`` is the HTTP status and ``server_message`` the API's own error
    text, so a caller can tell the cases apart without parsing the message.
    """

    def __init__(self, message: str, *, status: int, server_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class ProxyExists(ProxyRequestFailed):
    """A proxy of that name exists already."""


class ProxyNotFound(ProxyRequestFailed):
    """No proxy of that name exists."""


class ToxicExists(ProxyRequestFailed):
    """The proxy has a toxic of that name already."""


class ToxicNotFound(ProxyRequestFailed):
    """The proxy has no toxic of that name."""


class ProxyRequestRejected(ProxyRequestFailed):
    """The API refused the request's values (HTTP 400)."""


class ProxyUnreachable(ProxyError):
    """The proxy API did not answer: refused, timed out, or not HTTP.

    ``reason`` is the low-level cause, e.g. "[Errno 111] Connection refused".
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
