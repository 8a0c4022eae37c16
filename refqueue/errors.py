"""Exceptions of the reference queue: one root, subclasses named for what went wrong."""


class RefQueueError(Exception):
    """The reference queue cannot go on with a request; the message says why."""


class LeaseLost(RefQueueError):
    """The caller's lease on a job expired or was taken over, so nothing was changed.

    The job is no longer this caller's to complete or fail; another claim (or
    the next one) will run it again. See docs/leases.md.
    """


class UnknownHandler(RefQueueError):
    """A handler given as ``module:function`` cannot be imported or called."""


class ConfigError(RefQueueError):
    """A setting of the worker or of a call is not acceptable."""
