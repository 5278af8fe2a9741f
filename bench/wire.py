"""The load generator's raw HTTP/1.1 connections, no HTTP client library between (the load
generator must cost less than what it measures): `SSEClient`, one streamed answer read to
its end; `Exchange`, requests one after another on one kept-alive connection, for readers
and writers that make many short requests (Durable Streams long-polls, catch-up reads,
appends). For those the head is searched for the few headers wanted, the body is
Content-Length or chunked, and a large body is kept as its pieces until the answer is
complete (no copy per piece).

An *owner* drives it: `next_request()` gives the request to send now (None: done; it
depends only on the owner's state, so a connection lost mid-answer simply asks again on
a new one), `answer(status, head, body, now)` takes each answer (`head` lower-cased)."""

from __future__ import annotations

import asyncio
import collections
import time


class SSEClient(asyncio.Protocol):
    """One reader on a raw connection: an HTTP/1.1 request, the response head, then the
    body (de-chunked here) fed to its `Reader` (load.py)."""

    def __init__(self, reader, request: bytes, kind: str, expect: int, done, head_seen):
        self.reader, self.request, self.kind, self.expect = reader, request, kind, expect
        self.done, self.head_seen = done, head_seen
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.buf = b""
        self.need = 0  # > 0: payload bytes left in this chunk; < 0: CRLF bytes to skip
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.reader.connected_ns = time.time_ns()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if not self.in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            self.in_body = True
            if not head.startswith(b"HTTP/1.1 200"):
                self.reader.fail(f"HTTP {head[:40]!r}")
                self.transport.close()
                return
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            self.reader.result.first_byte_ns.append(now - self.reader.started_ns)
            self.head_seen()
        if not self.chunked:
            self._payload(data, now)
            return
        self.buf += data
        buf = self.buf
        while buf:
            if self.need > 0:
                piece, buf = buf[: self.need], buf[self.need :]
                self.need -= len(piece)
                if self.need == 0:
                    self.need = -2
                self._payload(piece, now)
            elif self.need < 0:
                skip = min(-self.need, len(buf))
                buf, self.need = buf[skip:], self.need + skip
            else:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(buf[:line_end].split(b";")[0], 16)
                buf = buf[line_end + 2 :]
                if size == 0:
                    self.transport.close()
                    break
                self.need = size
        self.buf = buf

    def _payload(self, data: bytes, now: int) -> None:
        self.reader.feed(data, now)
        if self.kind == "seq" and self.reader.expect >= self.expect:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


HEAD, LENGTH, CHUNKED, LAST = 0, 1, 2, 3  # LAST: the CRLF after the last chunk


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a lower-cased response head, or None."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


class Exchange(asyncio.Protocol):
    """One connection of an owner; `done` resolves when it is closed."""

    def __init__(self, owner, done: asyncio.Future):
        self.owner, self.done = owner, done
        self.state, self.buf, self.head, self.status = HEAD, b"", b"", 0
        self.pieces: list[bytes] = []
        self.need = 0  # LENGTH: bytes left; CHUNKED: > 0 payload left, < 0 CRLF to skip
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        request = self.owner.next_request()
        if request is None:
            self.transport.close()
        else:
            self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        while data:
            if self.state == HEAD:
                data = self._head(data)
            elif self.state == LENGTH:
                piece, data = data[: self.need], data[self.need :]
                self.pieces.append(piece)
                self.need -= len(piece)
                if self.need == 0:
                    self._complete()
            else:
                data = self._chunked(data)

    def _head(self, data: bytes) -> bytes:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return b""
        self.head, rest = self.buf[: end + 2].lower(), self.buf[end + 4 :]
        self.buf, self.status, self.pieces = b"", int(self.head[9:12]), []
        if self.status in (204, 304) or self.status < 200:
            self._complete()
        elif header(self.head, b"transfer-encoding") == b"chunked":
            self.state, self.need = CHUNKED, 0
        else:
            self.state, self.need = LENGTH, int(header(self.head, b"content-length") or 0)
            if self.need == 0:
                self._complete()
        return rest

    def _chunked(self, data: bytes) -> bytes:
        if self.need > 0:
            piece, data = data[: self.need], data[self.need :]
            self.pieces.append(piece)
            self.need -= len(piece)
            if self.need == 0:
                self.need = -2
            return data
        if self.need < 0:
            skip = min(-self.need, len(data))
            self.need += skip
            if self.need == 0 and self.state == LAST:
                self._complete()
            return data[skip:]
        self.buf += data
        line_end = self.buf.find(b"\r\n")
        if line_end < 0:
            return b""
        size = int(self.buf[:line_end].split(b";")[0], 16)
        data, self.buf = self.buf[line_end + 2 :], b""
        if size == 0:  # the last chunk, then (no trailers here) its CRLF
            self.state, self.need = LAST, -2
            return data
        self.need = size
        return data

    def _complete(self) -> None:
        body = b"".join(self.pieces) if len(self.pieces) != 1 else self.pieces[0]
        self.state, self.pieces, self.need = HEAD, [], 0
        self.owner.answer(self.status, self.head, body, time.time_ns())
        if header(self.head, b"connection") == b"close":
            self.transport.close()
        else:
            self._send()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def drive(owner, host: str, port: int) -> None:
    """Run an owner to its end, on a new connection whenever one closes under it."""
    loop = asyncio.get_running_loop()
    while not owner.finished:
        done = loop.create_future()
        try:
            await loop.create_connection(lambda done=done: Exchange(owner, done), host, port)
        except OSError as e:
            owner.fail(f"{type(e).__name__}: {e}")
            return
        await done


class Poster:
    """Open-loop POSTs of one prepared request on kept-alive raw connections (the creates'
    load generator): an idle connection is reused, another opened when none is free.
    aiohttp's client cost the generator ~0.5 ms of CPU a request, a quarter of a core at
    500/s taken from the servers it measures."""

    def __init__(self, url: str, path: str, body: bytes, max_connections: int = 2000):
        host, port = url.split("//", 1)[1].split(":")
        # past this many, a create waits for a free connection (its latency counts from
        # when it was due): a server that falls behind must not exhaust our descriptors
        self.free = asyncio.Semaphore(max_connections)
        self.host, self.port = host, int(port)
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.idle: collections.deque[_Post] = collections.deque()

    async def post(self) -> int:
        """One request; its status (0 when the connection failed). The idle connection
        used longest ago goes first, so `--workers 2` share the load: a connection stays
        with the worker that accepted it."""
        async with self.free:
            if self.idle:
                conn = self.idle.popleft()
            else:
                loop = asyncio.get_running_loop()
                try:
                    _, conn = await loop.create_connection(_Post, self.host, self.port)
                except OSError:
                    return 0
            try:
                status = await conn.ask(self.request)
            except ConnectionError:
                return 0
            if not conn.closed:
                self.idle.append(conn)
            return status

    def close(self) -> None:
        for conn in self.idle:
            conn.transport.close()


class _Post(asyncio.Protocol):
    """One kept-alive connection: a request, then its answer's head and Content-Length body."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.buf, self.need, self.status, self.closed = b"", -1, 0, False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def ask(self, request: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf, self.need = b"", -1
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[: end + 2].lower()
            self.status, self.need = int(head[9:12]), int(header(head, b"content-length") or 0)
            self.buf = self.buf[end + 4 :]
        if len(self.buf) >= self.need and self.waiter and not self.waiter.done():
            self.waiter.set_result(self.status)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))
