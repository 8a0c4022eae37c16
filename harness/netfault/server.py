"""The fault proxy server: Toxiproxy's HTTP API over asyncio, run as a process.

Run it as ``python -m harness.netfault --port 0 --seed 7``. The first line on
stdout is JSON naming the API address, e.g. ``{"api": "http://127.0.0.1:41234",
...}``; logs go to stderr. SIGTERM or SIGINT stops it.

It follows Toxiproxy 2's API (paths, JSON shapes, status codes, toxic names
and attributes), with these differences, all on purpose:

- every random choice (toxicity, jitter, slicer sizes) follows ``--seed``;
- listen addresses must be loopback unless ``--allow-non-loopback``, and a
  proxy created without one listens on ``127.0.0.1:0``;
- negative attributes and a toxicity outside 0..1 are refused with 400;
- removing a ``timeout`` toxic closes only the connections it acted on.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from harness import __version__
from harness.netfault import _model
from harness.netfault._model import ApiError
from harness.netfault._proxy import Registry

log = logging.getLogger("queue_chaos.netfault")

VERSION = f"queue-chaos-netfault/{__version__}"
MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT_S = 60.0

Reply = tuple[int, Any]


class _BadHttp(Exception):
    """The bytes on an API connection are not an HTTP/1.x request we accept."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Request:
    def __init__(
        self, method: str, path: str, headers: dict[str, str], body: bytes, version: str
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.version = version

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _model.bad_request(str(exc) if self.body else "EOF") from None

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    """Read one request; None when the client closed between requests."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadHttp("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadHttp("request head too large", 431) from None

    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _BadHttp(f"malformed request line {lines[0]!r}") from None
    if not version.startswith("HTTP/1."):
        raise _BadHttp(f"unsupported protocol {version!r}", 505)

    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()

    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadHttp("chunked request bodies are not supported", 411)
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadHttp("malformed content-length") from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise _BadHttp(f"request body of {length} bytes is too large", 413)

    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await reader.readexactly(length) if length else b""
    path = urllib.parse.urlsplit(target).path
    return _Request(method.upper(), path, headers, body, version)


def _render(status: int, payload: Any, *, keep_alive: bool) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    body = b""
    if status != 204:
        body = json.dumps(payload).encode() + b"\n"
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ApiServer:
    """Routes Toxiproxy API requests to the proxy registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one API connection, request after request (keep-alive)."""
        try:
            while True:
                try:
                    request = await _read_request(reader, writer)
                except _BadHttp as exc:
                    reply = ApiError(str(exc), exc.status).to_json()
                    writer.write(_render(exc.status, reply, keep_alive=False))
                    await writer.drain()
                    return
                if request is None:
                    return

                status, payload = await self.dispatch(request)
                writer.write(_render(status, payload, keep_alive=request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stayed idle too long
        except asyncio.CancelledError:
            # The server is stopping. Returning instead of raising keeps
            # Python 3.11's stream callback from logging the cancellation.
            return
        finally:
            writer.close()

    async def dispatch(self, request: _Request) -> Reply:
        if request.headers.get("user-agent", "").startswith("Mozilla/"):
            return 403, ApiError("user agent not allowed", 403).to_json()

        parts = [urllib.parse.unquote(part) for part in request.path.split("/")[1:]]
        route = self._route(request.method, parts)
        if route is None:
            return 404, ApiError("not found", 404).to_json()
        if isinstance(route, int):
            return route, ApiError("method not allowed", route).to_json()

        handler, args = route
        try:
            async with self.registry.lock:
                status, payload = await handler(request, *args)
        except ApiError as exc:
            status, payload = exc.status, exc.to_json()
        except Exception as exc:
            log.exception(
                "api request failed",
                extra={"method": request.method, "path": request.path},
            )
            status, payload = 500, ApiError(repr(exc), 500).to_json()
        log.debug(
            "api request",
            extra={"method": request.method, "path": request.path, "status": status},
        )
        return status, payload

    def _route(
        self, method: str, parts: list[str]
    ) -> tuple[Callable[..., Awaitable[Reply]], list[str]] | int | None:
        table: dict[tuple[str, ...], dict[str, Callable[..., Awaitable[Reply]]]]
        table = {
            ("version",): {"GET": self.version},
            ("reset",): {"POST": self.reset},
            ("populate",): {"POST": self.populate},
            ("proxies",): {"GET": self.proxy_index, "POST": self.proxy_create},
            ("proxies", "*"): {
                "GET": self.proxy_show,
                "POST": self.proxy_update,
                "PATCH": self.proxy_update,
                "DELETE": self.proxy_delete,
            },
            ("proxies", "*", "toxics"): {
                "GET": self.toxic_index,
                "POST": self.toxic_create,
            },
            ("proxies", "*", "toxics", "*"): {
                "GET": self.toxic_show,
                "POST": self.toxic_update,
                "PATCH": self.toxic_update,
                "DELETE": self.toxic_delete,
            },
        }
        for pattern, methods in table.items():
            if len(pattern) != len(parts):
                continue
            pairs = list(zip(pattern, parts, strict=True))
            if all(p == part or (p == "*" and part) for p, part in pairs):
                args = [part for p, part in pairs if p == "*"]
                if method not in methods:
                    return 405
                return methods[method], args
        return None

    async def version(self, request: _Request) -> Reply:
        return 200, {"version": VERSION}

    async def reset(self, request: _Request) -> Reply:
        await self.registry.reset()
        return 204, None

    async def populate(self, request: _Request) -> Reply:
        proxies, error = await self.registry.populate(request.json())
        payload: dict[str, Any] = {"proxies": [proxy.to_json() for proxy in proxies]}
        if error is not None:
            payload.update(error.to_json())
            return error.status, payload
        return 201, payload

    async def proxy_index(self, request: _Request) -> Reply:
        proxies = self.registry.proxies
        return 200, {name: proxy.to_json() for name, proxy in proxies.items()}

    async def proxy_create(self, request: _Request) -> Reply:
        proxy = await self.registry.create(request.json())
        return 201, proxy.to_json()

    async def proxy_show(self, request: _Request, name: str) -> Reply:
        return 200, self.registry.get(name).to_json()

    async def proxy_update(self, request: _Request, name: str) -> Reply:
        proxy = self.registry.get(name)
        current = _model.ProxyInput(
            name=proxy.name,
            listen=proxy.listen,
            upstream=proxy.upstream,
            enabled=proxy.enabled,
        )
        await proxy.update(_model.parse_proxy_input(request.json(), current=current))
        return 200, proxy.to_json()

    async def proxy_delete(self, request: _Request, name: str) -> Reply:
        await self.registry.delete(name)
        return 204, None

    async def toxic_index(self, request: _Request, name: str) -> Reply:
        proxy = self.registry.get(name)
        return 200, [spec.to_json() for spec in proxy.ordered_toxics()]

    async def toxic_create(self, request: _Request, name: str) -> Reply:
        proxy = self.registry.get(name)
        spec = _model.parse_new_toxic(request.json())
        proxy.add_toxic(spec)
        return 200, spec.to_json()

    async def toxic_show(self, request: _Request, name: str, toxic: str) -> Reply:
        return 200, self.registry.get(name).toxic(toxic).to_json()

    async def toxic_update(self, request: _Request, name: str, toxic: str) -> Reply:
        proxy = self.registry.get(name)
        return 200, proxy.update_toxic(toxic, request.json()).to_json()

    async def toxic_delete(self, request: _Request, name: str, toxic: str) -> Reply:
        self.registry.get(name).remove_toxic(toxic)
        return 204, None


class _FieldsFormatter(logging.Formatter):
    """Formats a record as its fixed message followed by its extra fields."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {
            key: value
            for key, value in vars(record).items()
            if key not in self._standard
        }
        if fields:
            line += " " + " ".join(f"{key}={value!r}" for key, value in fields.items())
        return line


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.netfault",
        description="Toxiproxy-compatible TCP fault proxy with seeded randomness.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API address")
    parser.add_argument(
        "--port", type=int, default=8474, help="API port; 0 picks a free one"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every random choice"
    )
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow the API and proxies to listen on non-loopback addresses",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="level of the log written to stderr",
    )
    return parser.parse_args(argv)


async def serve(*, host: str, port: int, seed: int, allow_non_loopback: bool) -> int:
    """Serve the API until SIGTERM or SIGINT, then stop every proxy.

    Returns the exit status: 0 after a signal, 2 when the port is unusable.
    """
    registry = Registry(seed=seed, allow_non_loopback=allow_non_loopback)
    api = ApiServer(registry)
    host = "127.0.0.1" if host == "localhost" else host
    try:
        server = await asyncio.start_server(
            api.handle, host, port, limit=MAX_HEADER_BYTES
        )
    except OSError as exc:
        print(
            f"netfault: cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "pick another --port, or 0 for a free one",
            file=sys.stderr,
        )
        return 2
    actual_port = server.sockets[0].getsockname()[1]
    url = f"http://{_model.join_host_port(host, actual_port)}"

    # The first stdout line is how a parent learns the port; nothing else
    # goes to stdout.
    announcement = {"api": url, "pid": os.getpid(), "seed": seed}
    sys.stdout.write(json.dumps(announcement) + "\n")
    sys.stdout.flush()
    log.info("api listening", extra={"url": url, "seed": seed})

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()

    server.close()
    async with registry.lock:
        await registry.shutdown()
    log.info("api stopped", extra={"url": url})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("queue_chaos")
    root.addHandler(handler)
    root.setLevel(args.log_level.upper())

    if not args.allow_non_loopback and not _model.is_loopback(args.host):
        print(
            f"netfault: --host {args.host} is not a loopback address; use "
            "127.0.0.1 or pass --allow-non-loopback",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(
        serve(
            host=args.host,
            port=args.port,
            seed=args.seed,
            allow_non_loopback=args.allow_non_loopback,
        )
    )
