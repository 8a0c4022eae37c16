"""The data path of one proxied connection: two links, each a chain of toxics.

A link carries one direction: ``upstream`` from the client to the upstream
server, ``downstream`` back. While a link has no active toxic and nothing is
queued, each chunk read is written straight to the other socket from the
protocol callback, with no task in between. Otherwise chunks are stamped with
their arrival time and queued, and a processor task passes them through the
link's active stages in the order the toxics were added, so a latency toxic
delays each chunk from its arrival (pipelined, as upstream Toxiproxy does)
instead of from the end of the previous delay. Reading pauses while more than
QUEUE_LIMIT_BYTES wait, which bounds a link under latency L to about
QUEUE_LIMIT_BYTES / L per second (20 MB/s at 50 ms).

Each toxic becomes one stage per link. Whether a stage is active is decided
once per connection and toxic: a draw in [0, 1) from a generator seeded with
the server seed, the proxy name, the connection ordinal and the toxic name is
compared with the toxic's toxicity. The same seed therefore picks the same
connections, and raising the toxicity of a toxic only adds connections to the
ones it already affects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from harness.netfault._model import ToxicSpec

log = logging.getLogger("queue_chaos.netfault.link")

QUEUE_LIMIT_BYTES = 1 << 20
CLOSE_GRACE_S = 5.0

Emit = Callable[["Chunk"], Awaitable[None]]
EmitEof = Callable[[], Awaitable[None]]


class Chunk:
    """Bytes read from a socket and the loop time they arrived (or are due)."""

    __slots__ = ("data", "t")

    def __init__(self, data: bytes, t: float) -> None:
        self.data = data
        self.t = t


def _seeded(seed: int, proxy: str, ordinal: int, toxic: str, use: str) -> random.Random:
    # String seeds are hashed with SHA-512, so this is stable across processes.
    return random.Random(f"{seed}/{proxy}/{ordinal}/{toxic}/{use}")


class Stage:
    """One toxic on one link; it does nothing while inactive."""

    def __init__(self, spec: ToxicSpec, link: Link, draw: float, rng: random.Random):
        self.spec = spec
        self.link = link
        self.draw = draw
        self.rng = rng
        self.active = False
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"<{type(self).__name__} {self.spec.name} {self.link.stream} {state}>"

    def attr(self, name: str) -> int:
        return self.spec.attributes.get(name, 0)

    def begin(self) -> None:
        self.active = self.draw < self.spec.toxicity
        if self.active:
            self.on_activate()

    def update(self, spec: ToxicSpec) -> None:
        was_active = self.active
        self.spec = spec
        self.active = self.draw < spec.toxicity
        if self.active and not was_active:
            self.on_activate()
        elif was_active and not self.active:
            self.on_deactivate()
        elif self.active:
            self.on_update()
        self._poke()

    def remove(self) -> None:
        if self.active:
            self.active = False
            self.on_deactivate()
        self._poke()

    def on_activate(self) -> None:
        """Called when the stage starts acting on its link."""

    def on_update(self) -> None:
        """Called when the attributes of an active stage change."""

    def on_deactivate(self) -> None:
        """Called when the stage stops acting: removed, or toxicity lowered."""

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        await emit(chunk)

    async def finish(self, emit_eof: EmitEof) -> None:
        await emit_eof()

    async def pause(self, delay_s: float) -> None:
        """Sleep delay_s, or less when the toxic is updated or removed."""
        if delay_s <= 0:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        handle = loop.call_later(delay_s, _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    async def pause_until(self, due: Callable[[], float]) -> None:
        """Sleep until due(), read again after every update, while active."""
        loop = asyncio.get_running_loop()
        while self.active:
            remaining_s = due() - loop.time()
            if remaining_s <= 0:
                return
            await self.pause(remaining_s)

    def _poke(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Latency(Stage):
    """Delays each chunk by latency ± jitter ms from its arrival."""

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        draw = self.rng.random()

        def due() -> float:
            jitter_ms = self.attr("jitter")
            offset_ms = int(draw * 2 * jitter_ms) - jitter_ms if jitter_ms else 0
            return chunk.t + max(self.attr("latency") + offset_ms, 0) / 1000

        await self.pause_until(due)
        if self.active:
            chunk.t = max(chunk.t, due())
        await emit(chunk)


class Bandwidth(Stage):
    """Limits the link to rate KB/s, sending at most 100 ms worth at a time."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._free_at = 0.0

    def _due(self, start: float, size: int) -> float:
        rate_kbps = self.attr("rate")
        return start + size / (rate_kbps * 1000) if rate_kbps > 0 else start

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        data = chunk.data
        while data and self.active and self.attr("rate") > 0:
            piece = data[: self.attr("rate") * 100]
            start = max(loop.time(), self._free_at)
            await self.pause_until(functools.partial(self._due, start, len(piece)))
            self._free_at = self._due(start, len(piece))
            data = data[len(piece) :]
            await emit(Chunk(piece, chunk.t))
        if data:
            await emit(Chunk(data, chunk.t))


class Slicer(Stage):
    """Cuts chunks into pieces of average_size ± size_variation bytes."""

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        data = chunk.data
        while data and self.active and self.attr("average_size") > 0:
            variation = self.attr("size_variation")
            size = self.attr("average_size")
            if variation:
                size += self.rng.randint(-variation, variation)
            piece, data = data[: max(size, 1)], data[max(size, 1) :]
            await emit(Chunk(piece, chunk.t))
            if data:
                await self.pause(self.attr("delay") / 1_000_000)
        if data:
            await emit(Chunk(data, chunk.t))


class LimitData(Stage):
    """Closes the connection once exactly bytes have passed this stage."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sent_bytes = 0

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        limit_bytes = self.attr("bytes")
        allowed = max(limit_bytes - self.sent_bytes, 0)
        if allowed:
            piece = chunk.data[:allowed]
            self.sent_bytes += len(piece)
            await emit(Chunk(piece, chunk.t))
        if self.active and self.sent_bytes >= limit_bytes:
            self.link.conn.close("limit_data")


class Timeout(Stage):
    """Drops all data; closes after timeout ms, or never when timeout is 0.

    As upstream, a connection this toxic has acted on is closed when the toxic
    is removed: bytes were dropped, so the stream cannot be trusted any more.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._timer: asyncio.TimerHandle | None = None

    def on_activate(self) -> None:
        self._arm()

    def on_update(self) -> None:
        self._arm()

    def on_deactivate(self) -> None:
        self._disarm()
        self.link.conn.close("timeout removed")

    def _arm(self) -> None:
        self._disarm()
        timeout_ms = self.attr("timeout")
        if timeout_ms > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(
                timeout_ms / 1000, self.link.conn.close, "timeout"
            )

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        if not self.active:
            await emit(chunk)


class ResetPeer(Stage):
    """Resets the connection (TCP RST) timeout ms after data or end of stream."""

    async def _countdown(self) -> bool:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.pause_until(lambda: start + self.attr("timeout") / 1000)
        if self.active:
            self.link.conn.reset("reset_peer")
            return True
        return False

    async def process(self, chunk: Chunk, emit: Emit) -> None:
        if not await self._countdown():
            await emit(chunk)

    async def finish(self, emit_eof: EmitEof) -> None:
        if not await self._countdown():
            await emit_eof()


class SlowClose(Stage):
    """Holds the end of the stream back for delay ms."""

    async def finish(self, emit_eof: EmitEof) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self.pause_until(lambda: start + self.attr("delay") / 1000)
        await emit_eof()


STAGES: dict[str, type[Stage]] = {
    "bandwidth": Bandwidth,
    "latency": Latency,
    "limit_data": LimitData,
    "noop": Stage,
    "reset_peer": ResetPeer,
    "slicer": Slicer,
    "slow_close": SlowClose,
    "timeout": Timeout,
}


class Side(asyncio.Protocol):
    """One socket of a connection, the client's or the upstream's.

    It reads into the link whose source it is, and the link whose destination
    it is writes to it. It starts paused, so that nothing is read before its
    connection is wired up.
    """

    def __init__(
        self, role: str, on_made: Callable[[Side], None] | None = None
    ) -> None:
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.reading: Link | None = None
        self.writing: Link | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self._on_made = on_made

    def __repr__(self) -> str:
        return f"<Side {self.role} of {self.conn!r}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.reading is not None:
            self.reading.feed(data)

    def eof_received(self) -> bool:
        if self.reading is not None:
            self.reading.feed_eof()
        return True  # keep the socket half-open: the other direction may flow

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if self.conn is None:
            return
        if exc is not None:
            self.conn.reset("socket error", error=exc)
        else:
            self.conn.close("socket closed")

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.writing is not None:
            self.writing.pause("destination full")

    def resume_writing(self) -> None:
        self.writable.set()
        if self.writing is not None:
            self.writing.resume("destination full")

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        if not self.writable.is_set():
            await self.writable.wait()


class Link:
    """One direction of a connection: reads from source, writes to dest."""

    def __init__(self, conn: Connection, stream: str, source: Side, dest: Side):
        self.conn = conn
        self.stream = stream
        self.source = source
        self.dest = dest
        self.stages: list[Stage] = []
        self.done = False
        self._queue: collections.deque[Chunk | None] = collections.deque()
        self._queued_bytes = 0
        self._busy = False
        self._wake = asyncio.Event()
        self._processor: asyncio.Task[None] | None = None
        self._pauses = {"starting"}
        source.reading = self
        dest.writing = self

    def __repr__(self) -> str:
        return f"<Link {self.conn.proxy}#{self.conn.ordinal} {self.stream}>"

    def stage(self, name: str) -> Stage | None:
        for stage in self.stages:
            if stage.spec.name == name:
                return stage
        return None

    def pause(self, reason: str) -> None:
        """Stop reading the source until every pause reason is resumed."""
        if not self._pauses and self.source.transport is not None:
            self.source.transport.pause_reading()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.source.transport is not None:
            self.source.transport.resume_reading()

    def _direct(self) -> bool:
        if self._queue or self._busy:
            return False
        return not any(stage.active for stage in self.stages)

    def feed(self, data: bytes) -> None:
        """Take data read from the source: write it at once, or queue it."""
        if self._direct():
            self.dest.write(data)
            return
        self._enqueue(Chunk(data, asyncio.get_running_loop().time()))
        if self._queued_bytes > QUEUE_LIMIT_BYTES:
            self.pause("queue full")

    def feed_eof(self) -> None:
        if self._direct():
            self._end()
        else:
            self._enqueue(None)

    def _enqueue(self, item: Chunk | None) -> None:
        self._queue.append(item)
        if item is not None:
            self._queued_bytes += len(item.data)
        if self._processor is None:
            self._processor = self.conn.spawn(self._process(), f"{self!r} toxics")
        self._wake.set()

    async def _process(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()

            # Busy before the pop, so that new data cannot overtake this chunk.
            self._busy = True
            item = self._queue.popleft()
            if item is None:
                await self._through_eof(list(self.stages), 0)
                return
            self._queued_bytes -= len(item.data)
            if self._queued_bytes <= QUEUE_LIMIT_BYTES:
                self.resume("queue full")
            await self._through(list(self.stages), 0, item)
            self._busy = False

    async def _through(self, stages: list[Stage], start: int, chunk: Chunk) -> None:
        for index in range(start, len(stages)):
            stage = stages[index]
            if stage.active:

                async def emit(out: Chunk, after: int = index + 1) -> None:
                    await self._through(stages, after, out)

                await stage.process(chunk, emit)
                return
        if chunk.data:
            self.dest.write(chunk.data)
            await self.dest.drain()

    async def _through_eof(self, stages: list[Stage], start: int) -> None:
        for index in range(start, len(stages)):
            stage = stages[index]
            if stage.active:

                async def emit_eof(after: int = index + 1) -> None:
                    await self._through_eof(stages, after)

                await stage.finish(emit_eof)
                return
        self._end()

    def _end(self) -> None:
        # Half-close only: the other direction may still be carrying data.
        transport = self.dest.transport
        assert transport is not None
        if not transport.is_closing() and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError as exc:
                self.conn.reset("socket error", error=exc)
                return
        self.done = True
        self.conn.link_done()


class Connection:
    """A client socket and its upstream socket, joined by two links."""

    def __init__(
        self,
        *,
        proxy: str,
        ordinal: int,
        seed: int,
        client: Side,
        upstream: Side,
        on_closed: Callable[[Connection], None],
    ) -> None:
        self.proxy = proxy
        self.ordinal = ordinal
        self.seed = seed
        self.closed = False
        self._sides = (client, upstream)
        self._on_closed = on_closed
        self._tasks: set[asyncio.Task[None]] = set()
        self.links = {
            "upstream": Link(self, "upstream", client, upstream),
            "downstream": Link(self, "downstream", upstream, client),
        }
        client.conn = upstream.conn = self

    def __repr__(self) -> str:
        return f"<Connection {self.proxy}#{self.ordinal}>"

    def start(self, toxics: Iterable[ToxicSpec]) -> None:
        for spec in toxics:
            self.add_toxic(spec)
        for link in self.links.values():
            link.resume("starting")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def add_toxic(self, spec: ToxicSpec) -> None:
        link = self.links[spec.stream]
        draw = _seeded(self.seed, self.proxy, self.ordinal, spec.name, "toxicity")
        rng = _seeded(self.seed, self.proxy, self.ordinal, spec.name, "values")
        stage = STAGES[spec.type](spec, link, draw.random(), rng)
        link.stages.append(stage)
        stage.begin()
        if stage.active:
            log.debug(
                "toxic acts on connection",
                extra={
                    "proxy": self.proxy,
                    "ordinal": self.ordinal,
                    "toxic": spec.name,
                },
            )

    def update_toxic(self, spec: ToxicSpec) -> None:
        stage = self.links[spec.stream].stage(spec.name)
        if stage is not None:
            stage.update(spec)

    def remove_toxic(self, spec: ToxicSpec) -> None:
        link = self.links[spec.stream]
        stage = link.stage(spec.name)
        if stage is not None:
            link.stages.remove(stage)
            stage.remove()

    def link_done(self) -> None:
        if all(link.done for link in self.links.values()):
            self.close("both streams ended")

    def close(self, reason: str) -> None:
        """Close both sockets after flushing what was already written."""
        if self._finish():
            return
        for side in self._sides:
            if side.transport is not None:
                side.transport.close()
        # A peer that stops reading would keep a closing socket open forever.
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._abort)
        log.debug(
            "connection closed",
            extra={"proxy": self.proxy, "ordinal": self.ordinal, "reason": reason},
        )

    def reset(self, reason: str, error: BaseException | None = None) -> None:
        """Close both sockets with SO_LINGER 0, so each peer gets a TCP RST."""
        if self._finish():
            return
        for side in self._sides:
            if side.transport is None:
                continue
            sock = side.transport.get_extra_info("socket")
            # A socket that is gone already cannot take the option; abort()
            # below closes it all the same.
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            side.transport.abort()
        log.debug(
            "connection reset",
            extra={
                "proxy": self.proxy,
                "ordinal": self.ordinal,
                "reason": reason,
                "error": repr(error) if error else None,
            },
        )

    def _abort(self) -> None:
        for side in self._sides:
            if side.transport is not None:
                side.transport.abort()

    def _finish(self) -> bool:
        """Mark closed and stop the link tasks; True when already closed."""
        if self.closed:
            return True
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        self._on_closed(self)
        return False
