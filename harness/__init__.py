"""queue-chaos: fault injection, recording and checking for Postgres job queues."""

__version__ = "0.1.0"
