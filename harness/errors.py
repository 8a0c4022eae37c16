"""Exceptions of the harness: one root, subclasses named for what went wrong."""


class QueueChaosError(Exception):
    """Something the harness cannot go on with; the message says what to do."""


class UsageError(QueueChaosError):
    """A value given by the user is not acceptable."""


class PostgresError(QueueChaosError):
    """The Postgres server could not be found, started, reached or faulted."""


class BinariesNotFound(PostgresError):
    """No usable Postgres binaries were found."""


class ServerFaultRefused(PostgresError):
    """A server fault was asked of a server the harness does not own."""


class ProxyError(QueueChaosError):
    """The fault proxy refused a request or could not be reached."""


class AdapterError(QueueChaosError):
    """A queue adapter could not install, enqueue, start or snapshot."""


class ReportError(QueueChaosError):
    """A report could not be written, or a recorded one cannot be read."""
