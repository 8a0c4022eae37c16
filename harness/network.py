"""The fault proxies in front of the database, one for workers and one for clients.

Workers and enqueuing clients reach the database through separate proxies,
so a partition can cut the workers off while clients still enqueue, and the
other way round. The proxies live in the embedded fault proxy, or in a real
Toxiproxy when TOXIPROXY_URL is set; both are driven through the same client.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

from psycopg import conninfo

from harness.netfault import Proxy, ToxiproxyClient, connect

log = logging.getLogger("queue_chaos.network")

SIDES = ("workers", "clients")

# The streams each network fault acts on: a black hole and a reset cut both
# ways; latency, a bandwidth limit and a byte limit act on what the database
# sends back, which is where queries wait.
_STREAMS = {
    "blackhole": ("upstream", "downstream"),
    "reset-peer": ("upstream", "downstream"),
    "latency": ("downstream",),
    "bandwidth": ("downstream",),
    "limit-data": ("downstream",),
}


class SideProxy:
    """The proxy of one side (workers or clients) of one database."""

    def __init__(self, client: ToxiproxyClient, proxy: Proxy, side: str) -> None:
        self.client = client
        self.proxy = proxy
        self.side = side
        self._names = itertools.count(1)

    def __repr__(self) -> str:
        return f"<SideProxy {self.proxy.name} {self.proxy.listen}>"

    @property
    def name(self) -> str:
        return self.proxy.name

    def dsn(self, database: Any) -> str:
        """The database's DSN, pointed at this proxy."""
        params = conninfo.conninfo_to_dict(database.dsn)
        params["host"] = self.proxy.listen_host
        params["port"] = str(self.proxy.listen_port)
        return conninfo.make_conninfo(**params)

    def inject(
        self, fault: str, toxic: dict[str, Any] | None, rng: random.Random
    ) -> Callable[[], None]:
        """Start a network fault on this proxy; returns what heals it.

        A partition disables the proxy (its live connections are closed and
        new ones refused); every other fault is a toxic on the fault's streams.
        """
        if toxic is None:
            self.client.disable(self.name)
            return lambda: self.client.enable(self.name)
        added = []
        for stream in _STREAMS[fault]:
            name = f"{fault}-{next(self._names)}-{stream}"
            self.client.add_toxic(
                self.name, toxic["type"], toxic["attributes"], stream=stream,
                name=name,
            )
            added.append(name)

        def heal() -> None:
            for name in added:
                self.client.remove_toxic(self.name, name)

        return heal


class Network:
    """The fault proxy and the proxies of each database a run uses."""

    def __init__(self, client: ToxiproxyClient, upstream: str) -> None:
        self.client = client
        self.upstream = upstream
        self._proxies: dict[str, dict[str, SideProxy]] = {}

    def __repr__(self) -> str:
        return f"<Network {self.client.url} -> {self.upstream}>"

    @classmethod
    def start(cls, server: Any, *, seed: int = 0) -> Network:
        """Connect to TOXIPROXY_URL, or start the embedded proxy with seed."""
        params = conninfo.conninfo_to_dict(server.dsn())
        upstream = f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"
        return cls(connect(seed=seed), upstream)

    def proxies_for(self, database: Any) -> dict[str, SideProxy]:
        """A workers' and a clients' proxy to the server, for one database."""
        sides = {}
        for side in SIDES:
            name = f"{database.name}-{side}"
            proxy = self.client.create_proxy(name, self.upstream)
            sides[side] = SideProxy(self.client, proxy, side)
        self._proxies[database.name] = sides
        return sides

    def release(self, database: Any) -> None:
        """Delete the proxies of a database."""
        for side in self._proxies.pop(database.name, {}).values():
            try:
                self.client.delete_proxy(side.name)
            except Exception as exc:  # the proxy may be gone with its server
                log.warning("proxy not deleted", extra={"proxy": side.name,
                                                        "error": str(exc)})

    def close(self) -> None:
        for name in list(self._proxies):
            self._proxies.pop(name)
        self.client.close()
