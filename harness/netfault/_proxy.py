"""Proxies of the fault proxy: listeners, live connections and their toxics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from harness.netfault import _model
from harness.netfault._link import Connection, Side
from harness.netfault._model import ApiError, ProxyInput, ToxicSpec

log = logging.getLogger("queue_chaos.netfault.proxy")

UPSTREAM_CONNECT_TIMEOUT_S = 10.0


def _normal_listen(address: str, *, allow_non_loopback: bool) -> tuple[str, int]:
    host, port = _model.check_listen(address, allow_non_loopback=allow_non_loopback)
    # One address only: "localhost" could bind ::1 and 127.0.0.1 on two ports.
    return ("127.0.0.1" if host == "localhost" else host), port


class Proxy:
    """A listener that joins each client to a new upstream connection."""

    def __init__(self, spec: ProxyInput, *, seed: int, allow_non_loopback: bool):
        self.name = spec.name
        self.upstream = spec.upstream
        host, port = _normal_listen(spec.listen, allow_non_loopback=allow_non_loopback)
        self.listen = _model.join_host_port(host, port)
        self.enabled = False
        self.toxics: dict[str, ToxicSpec] = {}
        self.connections: set[Connection] = set()
        self._seed = seed
        self._allow_non_loopback = allow_non_loopback
        self._server: asyncio.Server | None = None
        self._accepted = 0
        self._generation = 0
        self._connecting: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Proxy {self.name} {self.listen} -> {self.upstream}>"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [spec.to_json() for spec in self.ordered_toxics()],
        }

    def ordered_toxics(self) -> list[ToxicSpec]:
        """Upstream toxics first, then downstream, each in order of creation."""
        return [
            spec
            for stream in _model.STREAMS
            for spec in self.toxics.values()
            if spec.stream == stream
        ]

    def differs(self, spec: ProxyInput) -> bool:
        host, port = _normal_listen(
            spec.listen, allow_non_loopback=self._allow_non_loopback
        )
        listen = _model.join_host_port(host, port)
        return listen != self.listen or spec.upstream != self.upstream

    async def start(self) -> None:
        if self.enabled:
            return
        host, port = _model.split_host_port(self.listen)
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: Side("client", self._on_accept), host, port
            )
        except OSError as exc:
            message = f"listen tcp {self.listen}: {exc.strerror or exc}"
            raise ApiError(message, 500) from None

        self._server = server
        self.listen = _model.join_host_port(host, server.sockets[0].getsockname()[1])
        self.enabled = True
        log.info(
            "proxy started",
            extra={
                "proxy": self.name,
                "listen": self.listen,
                "upstream": self.upstream,
            },
        )

    async def stop(self) -> None:
        """Stop listening and close every live connection.

        The listening socket is closed at once; waiting for the server to be
        closed would, on newer Pythons, also wait for peers that do not read.
        """
        if not self.enabled or self._server is None:
            self.enabled = False
            return
        self.enabled = False
        self._generation += 1
        server, self._server = self._server, None
        server.close()
        for task in list(self._connecting):
            task.cancel()
        for conn in list(self.connections):
            conn.close("proxy stopped")
        log.info("proxy stopped", extra={"proxy": self.name, "listen": self.listen})

    async def update(self, spec: ProxyInput) -> None:
        _model.check_upstream(spec.upstream)
        if self.differs(spec):
            await self.stop()
            host, port = _normal_listen(
                spec.listen, allow_non_loopback=self._allow_non_loopback
            )
            self.listen = _model.join_host_port(host, port)
            self.upstream = spec.upstream
        if spec.enabled:
            await self.start()
        else:
            await self.stop()

    def add_toxic(self, spec: ToxicSpec) -> None:
        if spec.name in self.toxics:
            raise _model.toxic_exists()
        self.toxics[spec.name] = spec
        for conn in list(self.connections):
            conn.add_toxic(spec)
        log.info(
            "toxic added",
            extra={"proxy": self.name, "toxic": spec.name, "toxic_type": spec.type},
        )

    def toxic(self, name: str) -> ToxicSpec:
        try:
            return self.toxics[name]
        except KeyError:
            raise _model.toxic_not_found() from None

    def update_toxic(self, name: str, body: object) -> ToxicSpec:
        spec = _model.parse_toxic_update(self.toxic(name), body)
        self.toxics[name] = spec
        for conn in list(self.connections):
            conn.update_toxic(spec)
        log.info("toxic updated", extra={"proxy": self.name, "toxic": name})
        return spec

    def remove_toxic(self, name: str) -> None:
        spec = self.toxic(name)
        del self.toxics[name]
        for conn in list(self.connections):
            conn.remove_toxic(spec)
        log.info("toxic removed", extra={"proxy": self.name, "toxic": name})

    def remove_all_toxics(self) -> None:
        for name in list(self.toxics):
            self.remove_toxic(name)

    def _on_accept(self, client: Side) -> None:
        # Ordinals follow the order of accepts, so a seed picks the same ones.
        self._accepted += 1
        task = asyncio.get_running_loop().create_task(
            self._join(client, self._accepted, self._generation),
            name=f"{self!r} join #{self._accepted}",
        )
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _join(self, client: Side, ordinal: int, generation: int) -> None:
        """Connect to the upstream and wire both sockets into a connection."""
        assert client.transport is not None
        host, port = _model.split_host_port(self.upstream)
        loop = asyncio.get_running_loop()

        try:
            _, upstream = await asyncio.wait_for(
                loop.create_connection(lambda: Side("upstream"), host, port),
                UPSTREAM_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            log.info(
                "upstream connect failed",
                extra={
                    "proxy": self.name,
                    "upstream": self.upstream,
                    "error": repr(exc),
                },
            )
            client.transport.close()
            return
        except asyncio.CancelledError:
            client.transport.close()
            raise

        # The proxy may have been stopped or moved while the upstream answered.
        stale = generation != self._generation or not self.enabled
        if stale or client.transport.is_closing():
            client.transport.close()
            assert upstream.transport is not None
            upstream.transport.close()
            return

        conn = Connection(
            proxy=self.name,
            ordinal=ordinal,
            seed=self._seed,
            client=client,
            upstream=upstream,
            on_closed=self.connections.discard,
        )
        self.connections.add(conn)
        conn.start(self.ordered_toxics())


class Registry:
    """All proxies by name; API changes to them are serialised by one lock."""

    def __init__(self, *, seed: int, allow_non_loopback: bool) -> None:
        self.seed = seed
        self.allow_non_loopback = allow_non_loopback
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise _model.proxy_not_found() from None

    def _new(self, spec: ProxyInput) -> Proxy:
        _model.check_upstream(spec.upstream)
        return Proxy(spec, seed=self.seed, allow_non_loopback=self.allow_non_loopback)

    async def create(self, body: object) -> Proxy:
        spec = _model.parse_proxy_input(body)
        if spec.name in self.proxies:
            raise _model.proxy_exists()
        proxy = self._new(spec)
        if spec.enabled:
            await proxy.start()
        self.proxies[spec.name] = proxy
        return proxy

    async def populate(self, body: object) -> tuple[list[Proxy], ApiError | None]:
        """Create or replace each proxy; stop at the first one that fails."""
        if not isinstance(body, list):
            raise _model.bad_request("expected a JSON array of proxies")
        specs = [
            _model.parse_proxy_input(item, where=f" at proxy {index}")
            for index, item in enumerate(body, start=1)
        ]
        for spec in specs:
            _model.check_upstream(spec.upstream)
            _normal_listen(spec.listen, allow_non_loopback=self.allow_non_loopback)

        done: list[Proxy] = []
        for spec in specs:
            existing = self.proxies.get(spec.name)
            if existing is not None and not existing.differs(spec):
                done.append(existing)
                continue
            if existing is not None:
                await existing.stop()
                del self.proxies[spec.name]
            proxy = self._new(spec)
            try:
                if spec.enabled:
                    await proxy.start()
            except ApiError as exc:
                return done, exc
            self.proxies[spec.name] = proxy
            done.append(proxy)
        return done, None

    async def delete(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in list(self.proxies.values()):
            await proxy.start()
            proxy.remove_all_toxics()

    async def shutdown(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()
