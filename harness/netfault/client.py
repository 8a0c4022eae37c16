"""Typed client of the Toxiproxy HTTP API, for the embedded proxy or a real one."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import ProxyError
from harness.netfault.errors import (
    ProxyExists,
    ProxyNotFound,
    ProxyRequestFailed,
    ProxyRequestRejected,
    ProxyUnreachable,
    ToxicExists,
    ToxicNotFound,
)

if TYPE_CHECKING:
    from harness.netfault._process import EmbeddedProxyServer

log = logging.getLogger("queue_chaos.netfault.client")

EMBEDDED_VERSION_PREFIX = "queue-chaos-netfault/"


@dataclass(frozen=True)
class Toxic:
    """A toxic as the API shows it.

    ``attributes`` use Toxiproxy's names and units: ``latency`` and ``jitter``
    in ms, ``rate`` in KB/s, ``delay`` in ms (slow_close) or µs (slicer),
    ``timeout`` in ms, ``bytes``, ``average_size`` and ``size_variation`` in
    bytes.
    """

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Toxic:
        return cls(
            name=data["name"],
            type=data["type"],
            stream=data.get("stream", "downstream"),
            toxicity=float(data.get("toxicity", 1.0)),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class Proxy:
    """A proxy as the API shows it; ``listen`` holds the port actually bound."""

    name: str
    upstream: str
    listen: str = "127.0.0.1:0"
    enabled: bool = True
    toxics: tuple[Toxic, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Proxy:
        return cls(
            name=data["name"],
            upstream=data["upstream"],
            listen=data["listen"],
            enabled=bool(data["enabled"]),
            toxics=tuple(Toxic.from_json(t) for t in data.get("toxics") or ()),
        )

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class ToxiproxyClient:
    """Calls one Toxiproxy API; every call has a timeout of timeout_s.

    Errors raise ``ProxyError`` subclasses from ``harness.netfault.errors``.
    A client returned by ``connect()`` may own an embedded server; ``close()``
    (or leaving the ``with`` block) stops it.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        server: EmbeddedProxyServer | None = None,
    ) -> None:
        if "://" not in url:
            url = f"http://{url}"
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.server = server
        # No HTTP proxy from the environment: the API is usually on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"<ToxiproxyClient {self.url}>"

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the embedded server this client owns, if any."""
        if self.server is not None:
            self.server.stop()

    def version(self) -> str:
        reply = self._call("GET", "/version", what="the version")
        if isinstance(reply, dict):
            return str(reply.get("version", ""))
        return str(reply)

    def is_seeded(self) -> bool:
        """True when the server is the embedded proxy, whose randomness is seeded."""
        return self.version().startswith(EMBEDDED_VERSION_PREFIX)

    def proxies(self) -> dict[str, Proxy]:
        reply = self._call("GET", "/proxies", what="the proxies")
        return {name: Proxy.from_json(data) for name, data in reply.items()}

    def create_proxy(
        self,
        name: str,
        upstream: str,
        *,
        listen: str = "127.0.0.1:0",
        enabled: bool = True,
    ) -> Proxy:
        body = {
            "name": name,
            "upstream": upstream,
            "listen": listen,
            "enabled": enabled,
        }
        reply = self._call("POST", "/proxies", body, what=f"proxy {name!r}", proxy=name)
        return Proxy.from_json(reply)

    def get_proxy(self, name: str) -> Proxy:
        reply = self._call(
            "GET", f"/proxies/{_quote(name)}", what=f"proxy {name!r}", proxy=name
        )
        return Proxy.from_json(reply)

    def update_proxy(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> Proxy:
        """Change fields of a proxy; a new listen or upstream drops its connections."""
        body: dict[str, Any] = {}
        if listen is not None:
            body["listen"] = listen
        if upstream is not None:
            body["upstream"] = upstream
        if enabled is not None:
            body["enabled"] = enabled
        reply = self._call(
            "POST",
            f"/proxies/{_quote(name)}",
            body,
            what=f"proxy {name!r}",
            proxy=name,
        )
        return Proxy.from_json(reply)

    def enable(self, name: str) -> Proxy:
        return self.update_proxy(name, enabled=True)

    def disable(self, name: str) -> Proxy:
        """Close the proxy's connections and refuse new ones until enabled."""
        return self.update_proxy(name, enabled=False)

    def delete_proxy(self, name: str) -> None:
        self._call(
            "DELETE", f"/proxies/{_quote(name)}", what=f"proxy {name!r}", proxy=name
        )

    def populate(self, proxies: Iterable[Proxy]) -> list[Proxy]:
        """Create proxies, replacing same-named ones whose addresses differ."""
        body = [
            {
                "name": proxy.name,
                "upstream": proxy.upstream,
                "listen": proxy.listen,
                "enabled": proxy.enabled,
            }
            for proxy in proxies
        ]
        reply = self._call("POST", "/populate", body, what="the proxies to populate")
        return [Proxy.from_json(data) for data in reply["proxies"]]

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset", what="the reset")

    def toxics(self, proxy: str) -> list[Toxic]:
        reply = self._call(
            "GET",
            f"/proxies/{_quote(proxy)}/toxics",
            what=f"the toxics of proxy {proxy!r}",
            proxy=proxy,
        )
        return [Toxic.from_json(data) for data in reply]

    def add_toxic(
        self,
        proxy: str,
        toxic_type: str,
        attributes: Mapping[str, int] | None = None,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> Toxic:
        """Add a toxic; its name defaults to ``<type>_<stream>``."""
        name = name or f"{toxic_type}_{stream}"
        body = {
            "name": name,
            "type": toxic_type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        reply = self._call(
            "POST",
            f"/proxies/{_quote(proxy)}/toxics",
            body,
            what=f"{toxic_type} toxic {name!r} of proxy {proxy!r}",
            proxy=proxy,
            toxic=name,
        )
        return Toxic.from_json(reply)

    def get_toxic(self, proxy: str, name: str) -> Toxic:
        reply = self._call(
            "GET",
            f"/proxies/{_quote(proxy)}/toxics/{_quote(name)}",
            what=f"toxic {name!r} of proxy {proxy!r}",
            proxy=proxy,
            toxic=name,
        )
        return Toxic.from_json(reply)

    def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: Mapping[str, int] | None = None,
        *,
        toxicity: float | None = None,
    ) -> Toxic:
        """Change attributes (the ones given) or toxicity of a toxic."""
        body: dict[str, Any] = {"attributes": dict(attributes or {})}
        if toxicity is not None:
            body["toxicity"] = toxicity
        reply = self._call(
            "POST",
            f"/proxies/{_quote(proxy)}/toxics/{_quote(name)}",
            body,
            what=f"toxic {name!r} of proxy {proxy!r}",
            proxy=proxy,
            toxic=name,
        )
        return Toxic.from_json(reply)

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call(
            "DELETE",
            f"/proxies/{_quote(proxy)}/toxics/{_quote(name)}",
            what=f"toxic {name!r} of proxy {proxy!r}",
            proxy=proxy,
            toxic=name,
        )

    def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        what: str,
        proxy: str | None = None,
        toxic: str | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._failure(exc, method, path, what, proxy, toxic) from None
        except (urllib.error.URLError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            reason = str(cause)
            if isinstance(cause, TimeoutError):
                reason = f"no answer within {self.timeout_s} s"
            raise ProxyUnreachable(
                f"fault proxy API at {self.url} does not answer ({reason}) to "
                f"{method} {path}; start it, or point TOXIPROXY_URL at a running "
                "Toxiproxy",
                reason=reason,
            ) from None

        log.debug("api call", extra={"method": method, "path": path})
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace").strip()

    def _failure(
        self,
        exc: urllib.error.HTTPError,
        method: str,
        path: str,
        what: str,
        proxy: str | None,
        toxic: str | None,
    ) -> ProxyError:
        try:
            raw = exc.read()
        except OSError:
            raw = b""
        try:
            server_message = str(json.loads(raw).get("error", ""))
        except (ValueError, AttributeError):
            server_message = raw.decode("utf-8", "replace").strip()
        status = exc.code
        kwargs = {"status": status, "server_message": server_message}

        if status == 409 and toxic is not None:
            return ToxicExists(
                f"toxic {toxic!r} already exists on proxy {proxy!r} at {self.url}; "
                "remove it first, or change it with update_toxic()",
                **kwargs,
            )
        if status == 409:
            return ProxyExists(
                f"proxy {proxy!r} already exists at {self.url}; delete it first, "
                "or use populate() to replace it",
                **kwargs,
            )
        if status == 404 and "toxic" in server_message:
            return ToxicNotFound(
                f"proxy {proxy!r} at {self.url} has no toxic {toxic!r}; add it "
                "first with add_toxic()",
                **kwargs,
            )
        if status == 404 and proxy is not None:
            return ProxyNotFound(
                f"no proxy {proxy!r} at {self.url}; create it first with "
                "create_proxy() or populate()",
                **kwargs,
            )
        if status == 400:
            return ProxyRequestRejected(
                f"fault proxy at {self.url} refused {what}: {server_message}",
                **kwargs,
            )
        return ProxyRequestFailed(
            f"fault proxy at {self.url} answered {method} {path} with HTTP "
            f"{status}: {server_message or 'no message'}",
            **kwargs,
        )


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
