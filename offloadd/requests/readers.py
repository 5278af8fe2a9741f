"""Following `.txt` files to SSE readers: one poll loop per process, one tail per file.

Readers know only files, so a reader here follows a stream written by any
process on any host that shares the directory. A tail reads each new byte once
and hands the same bytes objects to every reader of that file; a reader that
falls behind the tail's window catches up from disk, so a slow reader costs
no memory and never holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiofiles
import orjson

from offloadd.domain.dialects import dialect_of
from offloadd.domain.status import TERMINAL
from offloadd.metrics import Metrics
from offloadd.protocol.sse import KEEPALIVE
from offloadd.storage.transcript import END, READ, abandoned_end

log = logging.getLogger("offloadd.stream")

WINDOW = 256 * 1024  # bytes of a file held in memory for readers that keep up
LIVE_BUFFER = 64 * 1024  # a live reader whose unsent bytes pass this leaves the fast path
BATCH = 64 * 1024  # a replay joins its pieces up to this many bytes a write


class Sink(Protocol):
    """Where a reader's bytes go: `write` (the slow path, with back-pressure), and the
    transport with its framing when the tail's fast path may write to it directly."""

    chunked: bool

    @property
    def write(self) -> Callable[[bytes], Awaitable[None]]: ...

    def ready(self) -> asyncio.Transport | None: ...


IDLE = "idle"  # what a tail's waiters get when nothing was written for a keep-alive period


def framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk, as aiohttp's writer would frame it."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def drained(transport: asyncio.Transport | None) -> bool:
    """Open, and with no more unsent bytes than a live reader may have (duck-typed:
    uvloop's transports are no subclass of asyncio's)."""
    return (
        transport is not None
        and not transport.is_closing()
        and transport.get_write_buffer_size() <= LIVE_BUFFER
    )


LIVE_KEEPALIVE = framed(KEEPALIVE)


class Live:
    """A reader that has caught up with its tail. The tail writes each new chunk straight
    to its transport — framed once per chunk for all live readers, no task woken per
    reader per event — while it keeps up; its task sleeps on `left` until it does not."""

    __slots__ = ("transport", "chunked", "pos", "left")

    def __init__(self, transport: asyncio.Transport, chunked: bool, pos: int):
        self.transport, self.chunked, self.pos = transport, chunked, pos
        self.left: asyncio.Future = asyncio.get_running_loop().create_future()

    def can_take(self) -> bool:
        return drained(self.transport)

    def leave(self) -> None:
        if not self.left.done():
            self.left.set_result(None)


class Tail:
    """The growing end of one file, shared by all readers of it in this process."""

    __slots__ = (
        "path", "metrics", "fd", "start", "size", "chunks", "held", "_last", "done", "end",
        "readers", "active_at", "_waiters", "live", "checking",
    )  # fmt: skip

    def __init__(self, path: Path, metrics: Metrics):
        self.path, self.metrics = path, metrics
        self.fd = os.open(path, os.O_RDONLY)
        size = os.fstat(self.fd).st_size
        # The file's last WINDOW bytes from the start: a crowd arriving at a live stream
        # replays it from memory, not each reader from disk
        self.start = self.size = max(0, size - WINDOW)  # offset of the first byte held
        # (offset, bytes, events in them): the same objects go to every reader
        self.chunks: deque[tuple[int, bytes, int]] = deque()
        self.held = 0
        self._last = b""
        self.done = False
        self.end = b""  # an end the file lacks (its writer could not write it), once known
        self.readers = 0
        self.active_at = asyncio.get_running_loop().time()
        self._waiters: list[asyncio.Future] = []
        self.live: dict[Live, None] = {}
        self.checking: asyncio.Task | None = None  # is the file abandoned? (see Hub)
        self.poll()

    def poll(self) -> None:
        """Read what the file gained since the last poll, if anything."""
        while not self.done:
            data = os.pread(self.fd, READ, self.size)
            if not data:
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        offset, events = self.size, data.count(b"\n\n")
        self.chunks.append((offset, data, events))
        self.size += len(data)
        self.held += len(data)
        while self.held > WINDOW and len(self.chunks) > 1:
            dropped = self.chunks.popleft()[1]
            self.held -= len(dropped)
            self.start = self.chunks[0][0]
        self._last = (self._last + data)[-len(END) :]
        self.done = self._last.endswith(END)
        if self.live:
            self._fan_out(offset, data, events)
        self.wake(None)

    def _fan_out(self, offset: int, data: bytes, events: int) -> None:
        """The new bytes to every live reader that can take them now; the others, and all
        of them at the end, go back to their tasks. (The hot loop of a crowd: the live set
        is changed only when a reader leaves it.)"""
        chunk, size, gone = framed(data), len(data), []
        for reader in self.live:
            if reader.pos != offset or not reader.can_take():
                gone.append(reader)
                continue
            reader.transport.write(chunk if reader.chunked else data)
            reader.pos += size
        sent = len(self.live) - len(gone)
        for reader in gone:
            del self.live[reader]
            reader.leave()
        if self.done:
            live, self.live = self.live, {}
            for reader in live:
                reader.leave()
        self.metrics.bytes_delivered += sent * size
        self.metrics.events_delivered += sent * events

    def keepalive(self) -> None:
        """Nothing written for a keep-alive period: a comment to every reader, so proxies
        and browsers keep the connection."""
        for reader in list(self.live):
            if reader.can_take():
                reader.transport.write(LIVE_KEEPALIVE if reader.chunked else KEEPALIVE)
            else:
                del self.live[reader]
                reader.leave()
        self.wake(IDLE)

    def abandon(self, end: bytes) -> None:
        """The writer ended the request but could not write its end (full disk): readers
        get this one instead, after what the file holds."""
        self.end, self.done = end, True
        live, self.live = self.live, {}
        for reader in live:
            reader.leave()
        self.wake(None)

    def wake(self, signal: str | None) -> None:
        """Resume every reader waiting on this tail."""
        self.active_at = asyncio.get_running_loop().time()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(signal)

    def pieces(self, pos: int) -> list[tuple[bytes, int]] | None:
        """Bytes from `pos` on, as shared objects with their event counts; None when `pos`
        is before the window. Scans from the end: a reader that keeps up needs the last."""
        if pos < self.start:
            return None
        out = []
        for offset, data, events in reversed(self.chunks):
            if offset + len(data) <= pos:
                break
            if offset >= pos:
                out.append((data, events))
            else:
                rest = data[pos - offset :]
                out.append((rest, rest.count(b"\n\n")))
                break
        out.reverse()
        return out

    def changed(self) -> asyncio.Future:
        """A future of this reader's own (cancelling it touches no other reader), resolved
        when the file grows or stays idle for a keep-alive period."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def follow(self, reader: Live) -> int:
        """Be written to by the tail until it sends the reader back; where it got to."""
        self.live[reader] = None
        try:
            await reader.left
            return reader.pos
        finally:
            self.live.pop(reader, None)

    def close(self) -> None:
        os.close(self.fd)
        for waiter in self._waiters:
            waiter.cancel()
        for reader in self.live:
            reader.left.cancel()
        if self.checking is not None:
            self.checking.cancel()


class Hub:
    """All tails of this process and the one loop that polls them."""

    def __init__(
        self,
        interval: float,
        keepalive: float,
        retry_ms: int,
        metrics: Metrics,
        send_buffer: int = 0,  # each reader's kernel send buffer (0: the system's default)
    ):
        self.interval, self.keepalive, self.retry_ms = interval, keepalive, retry_ms
        self.metrics, self.send_buffer = metrics, send_buffer
        self.tails: dict[Path, Tail] = {}
        self._dirty: set[Path] = set()
        self._followed = asyncio.Event()  # set while any file is followed: the loop ticks

    def poke(self, path: Path) -> None:
        """A writer in this process appended to `path`: poll it at the end of this loop
        turn rather than at the next tick (pokes of one turn share one pass, no task)."""
        if path in self.tails:
            if not self._dirty:
                asyncio.get_running_loop().call_soon(self._poll_dirty)
            self._dirty.add(path)

    def _poll_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for path in dirty:
            if (tail := self.tails.get(path)) is not None:
                tail.poll()

    async def run(self) -> None:
        """Poll every followed file each interval (pokes come only from writers in this
        process, never for files other daemons write); idle ones also get their keep-alive.
        With nothing followed, no tick until a reader comes."""
        loop = asyncio.get_running_loop()
        while True:
            await self._followed.wait()
            await asyncio.sleep(self.interval)
            for tail in list(self.tails.values()):
                tail.poll()
            self._keepalive(loop.time())

    def _keepalive(self, now: float) -> None:
        """Idle tails: a keep-alive to their readers, and (once per tail, however many
        readers it has) a look at whether its writer ended the request but not the file."""
        for tail in self.tails.values():
            if not tail.done and now - tail.active_at >= self.keepalive:
                tail.keepalive()
                if tail.checking is None:
                    tail.checking = asyncio.create_task(self._check_abandoned(tail))

    async def _check_abandoned(self, tail: Tail) -> None:
        try:
            doc = await _final_document(tail.path)
            if doc is not None and not tail.done:
                end = await abandoned_end(tail.path, doc, self.retry_ms, dialect_of(doc))
                tail.abandon(end)
        except Exception:  # the readers go on with keep-alives; the next idle period retries
            log.exception("%s: could not tell whether it was abandoned", tail.path.name)
        finally:
            tail.checking = None

    @contextlib.asynccontextmanager
    async def tail(self, path: Path) -> AsyncIterator[Tail]:
        tail = self.tails.get(path)
        if tail is None:
            tail = self.tails[path] = Tail(path, self.metrics)
            self._followed.set()
        tail.readers += 1
        try:
            yield tail
        finally:
            tail.readers -= 1
            if tail.readers == 0 and self.tails.get(path) is tail:
                del self.tails[path]
                tail.close()
                if not self.tails:
                    self._followed.clear()

    async def pump(self, path: Path, pos: int, out: Sink) -> None:
        """Send the file from byte `pos` on, then what is appended, until `[DONE]`."""
        self.metrics.readers += 1
        try:
            await self._pump(path, pos, out)
        finally:
            self.metrics.readers -= 1

    async def _pump(self, path: Path, pos: int, out: Sink) -> None:
        metrics = self.metrics
        async with self.tail(path) as tail:
            while True:
                if pos < tail.size:
                    pieces = tail.pieces(pos)
                    if pieces is None:
                        data = await _read(path, pos, min(READ, tail.start - pos))
                        pieces = [(data, data.count(b"\n\n"))]
                    for piece, events in _batched(pieces):
                        await out.write(piece)
                        pos += len(piece)
                        metrics.bytes_delivered += len(piece)
                        metrics.events_delivered += events
                elif tail.done:
                    if tail.end:
                        await out.write(tail.end)
                    return
                elif transport := out.ready():
                    pos = await tail.follow(Live(transport, out.chunked, pos))
                elif await tail.changed() == IDLE:
                    await out.write(KEEPALIVE)


def _batched(pieces: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """A replay's pieces joined up to BATCH bytes a write: a reader arriving at a live
    stream gets its events in a few writes, not one write (and system call) per event."""
    out: list[tuple[bytes, int]] = []
    run: list[bytes] = []
    size = events = 0
    for piece, count in pieces:
        if run and size + len(piece) > BATCH:
            out.append((b"".join(run) if len(run) > 1 else run[0], events))
            run, size, events = [], 0, 0
        run.append(piece)
        size, events = size + len(piece), events + count
    if run:
        out.append((b"".join(run) if len(run) > 1 else run[0], events))
    return out


async def _final_document(path: Path) -> dict | None:
    """The status document beside a `.txt`, when it is final."""
    try:
        async with aiofiles.open(path.with_suffix(".json"), "rb") as f:
            doc = orjson.loads(await f.read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and doc.get("status") in TERMINAL else None


async def _read(path: Path, pos: int, size: int) -> bytes:
    """Bytes before the window, for a reader far behind: one worker-thread hop."""
    return await asyncio.to_thread(_pread, path, pos, size)


def _pread(path: Path, pos: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, pos)
    finally:
        os.close(fd)
