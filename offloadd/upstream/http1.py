"""A lean HTTP/1.1 client for the model call: one prepared request out, the answer parsed
by httptools (llhttp, the parser of Node.js and uvicorn), keep-alive connections pooled.

Why not aiohttp's client, which offloadd used before: for a short answer it cost about
0.5 ms of CPU per call, a third of a whole 1-token create, in building and tracking a
request object, its timers and its stream reader. The model call needs little of that:
a POST with a body made once, a status, a few headers and a body read as it comes.
Everything the upstream can do wrong (refuse, reset, stall, send what is not HTTP,
headers without end) surfaces as one `HTTPError`; the caller names it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD = 64 * 1024  # status line and headers together (aiohttp's limit was 8 KiB a line)
MAX_BUFFERED = 256 * 1024  # body bytes read ahead of the caller before reading pauses
IDLE_SECONDS = 30.0  # a pooled connection idle longer is closed rather than reused
MAX_IDLE = 64  # pooled connections per origin
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but the tab


class HTTPError(Exception):
    """The connection failed, or what came back is not HTTP we can read."""


class ConnectTimeout(HTTPError):
    """No connection within the time asked."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go: its origin (a pool key) and its request line's target."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def request_head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    """The request line and headers. A header value that could end its line (CR, LF or
    another control character, from a caller's key say) is refused, never sent."""
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"Content-Length: {length}",
        "Accept-Encoding: identity",
    ]
    for name, value in headers.items():
        if not _safe(name) or not _safe(value):
            raise ValueError(f"the header {name!r} holds a character HTTP does not allow")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _safe(text: str) -> bool:
    return _UNSAFE.search(text) is None


class Response:
    """An answer's status and headers, and its body as it comes (one per connection)."""

    __slots__ = ("status", "headers", "_conn")

    def __init__(self, status: int, headers: list[tuple[str, str]], conn: _Connection):
        self.status, self.headers, self._conn = status, headers, conn

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    async def read_any(self) -> bytes:
        """The body bytes that have come since the last call; b"" at the body's end."""
        return await self._conn.read_any()

    async def read(self, limit: int) -> bytes:
        """Up to `limit` body bytes, whatever the body's length."""
        out = bytearray()
        while len(out) < limit and (piece := await self.read_any()):
            out += piece
        return bytes(out[:limit])

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if its answer is whole."""
        self._conn.finish()

    def close(self) -> None:
        """Done with it, mid-answer perhaps: the connection is closed (the model stops)."""
        self._conn.close()


class Client:
    """Pooled keep-alive connections to the origins the model calls go to."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._ssl: ssl.SSLContext | None = None

    def target(self, url: str) -> Target:
        if (found := self._targets.get(url)) is None:
            found = self._targets[url] = Target.of(url)
        return found

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], connect_timeout: float
    ) -> Response:
        """Send the request; the answer once its head has come. A pooled connection the
        server closed meanwhile is replaced by a new one (no byte of an answer came)."""
        target = self.target(url)
        data = request_head(target, headers, len(body)) + body
        while (conn := self._reuse(target)) is not None:
            try:
                return await conn.send(data)
            except HTTPError:
                if conn.answered:
                    raise
        conn = await self._connect(target, connect_timeout)
        return await conn.send(data)

    def _reuse(self, target: Target) -> _Connection | None:
        idle = self._idle.get(target.origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            conn.unpooled()
            if conn.reusable and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    async def _connect(self, target: Target, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = None
        if target.scheme == "https":
            tls = self._ssl = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._idle.setdefault(target.origin, [])),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout:g} s") from None
        except (OSError, ssl.SSLError) as e:
            raise HTTPError(str(e) or type(e).__name__) from None
        return conn

    def close(self) -> None:
        """Close every pooled connection (at shutdown)."""
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                conn.unpooled()
                conn.close()


class _Connection(asyncio.Protocol):
    """One connection; one request and answer at a time. Parser callbacks fill the answer's
    head and body; the caller waits on `_wake` for more."""

    def __init__(self, pool: list[_Connection]):
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._wake: asyncio.Future | None = None
        self._head: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._status = 0
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._error: HTTPError | None = None
        self._pooled = False  # idle in its pool
        self.answered = False  # a byte of an answer came
        self.idle_since = 0.0

    @property
    def reusable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def send(self, data: bytes) -> Response:
        assert self._transport is not None
        self._reset()
        self._transport.write(data)
        try:
            while not self._headers_done:
                if self._error is not None:
                    raise self._error
                await self._wait()
        except BaseException:  # failed, or the caller left (a stop): not reused
            self.close()
            raise
        return Response(self._status, self._head, self)

    def unpooled(self) -> None:
        """Taken out of its pool (by `Client`), to be used or closed."""
        self._pooled = False

    def _reset(self) -> None:
        self._head, self._head_bytes, self._body, self._buffered = [], 0, [], 0
        self._headers_done = self._complete = self._keep_alive = self.answered = False

    async def _wait(self) -> None:
        """Until the parser or the connection has news (callers check `_error` first)."""
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def read_any(self) -> bytes:
        while not self._body:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._body) if len(self._body) > 1 else self._body[0]
        self._body, self._buffered = [], 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def finish(self) -> None:
        if self._complete and self._keep_alive and self._error is None and self.reusable:
            self.idle_since = time.monotonic()
            if len(self._pool) < MAX_IDLE:
                self._pool.append(self)
                self._pooled = True
                return
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._pooled:  # bytes no request asked for: this connection is not to be trusted
            self.close()
            return
        self.answered = True
        if not self._headers_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HTTPError("the upstream switched protocols"))
        except httptools.HttpParserError as e:
            self._fail(HTTPError(f"the upstream's answer is not valid HTTP: {e}"))
        else:
            if not self._headers_done and self._head_bytes > MAX_HEAD:
                self._fail(HTTPError(f"the upstream's headers went past {MAX_HEAD} bytes"))
        self._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pooled:
            self._pool.remove(self)
        if self._headers_done and not self._complete and self._until_close():
            self._complete = True  # a body without length or chunks ends with its connection
        if not self._complete and self._error is None:
            reason = f": {exc}" if exc else ""
            self._error = HTTPError(f"the connection closed before the answer's end{reason}")
        self._notify()

    def _until_close(self) -> bool:
        """An answer framed by neither a length nor chunks (HTTP/1.0's way)."""
        return not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in self._head)

    def _fail(self, error: HTTPError) -> None:
        self._error = error
        self.close()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._head) >= 256:
            raise HTTPError("the upstream sent more than 256 headers")
        self._head.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > MAX_BUFFERED and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True
