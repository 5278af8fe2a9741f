"""The load generator: many SSE readers in one process, lean on purpose.

No JSON parsing per event: records are split on blank lines, the id and the
mock's nanosecond stamp are found with byte searches. Every reader checks that
it got every event exactly once, in order.
"""

from __future__ import annotations

import array
import asyncio
import os
import re
import time
from dataclasses import dataclass, field

CONNECTING = 200  # connection attempts in flight per load-generator process
STAMP = re.compile(rb'"content":" ?(\d{19})"')
SEQ = re.compile(rb'"i":(\d+)')


@dataclass
class Result:
    readers: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ns: array.array = field(default_factory=lambda: array.array("q"))
    connected_at: float = 0.0
    cpu_seconds: float = 0.0
    first_stamp_ns: int = 0  # the earliest token sent, and the latest received: the run's span
    last_receipt_ns: int = 0
    # connection attempt → response head, per reader: how long a new reader waits
    first_byte_ns: array.array = field(default_factory=lambda: array.array("q"))


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of a process (and its reaped children), from /proc."""
    with open(f"/proc/{pid or os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Reader:
    """One SSE reader; `kind` says how order is checked: SSE ids (offloadd), a sequence in
    the payload (nchan), or chunk order (the mock, which sends no ids)."""

    def __init__(self, kind: str, result: Result):
        self.kind, self.result = kind, result
        self.expect = 1 if kind == "ids" else 0
        self.buf = b""
        self.done = False
        self.connected_ns = 0  # TCP connected: events sent before are replay, not latency
        self.started_ns = 0

    def feed(self, piece: bytes, now: int) -> None:
        self.buf += piece
        *records, self.buf = self.buf.split(b"\n\n")
        for record in records:
            self.record(record, now)

    def record(self, record: bytes, now: int) -> None:
        if self.kind == "ids":
            if not record.startswith(b"id: "):
                return
            event_id = int(record[4 : record.index(b"\n")])
            if event_id != self.expect:
                self.fail(f"expected id {self.expect}, got {event_id}")
            self.expect = event_id + 1
            if record.endswith(b"data: [DONE]"):
                self.done = True
        elif self.kind == "seq":
            m = SEQ.search(record)
            if not m:
                return
            seq = int(m[1])
            if seq != self.expect:
                self.fail(f"expected message {self.expect}, got {seq}")
            self.expect = seq + 1
        else:
            if record.endswith(b"data: [DONE]"):
                self.done = True
        self.result.events += 1
        m = STAMP.search(record)
        if m:
            stamp = int(m[1])
            result = self.result
            if stamp >= self.connected_ns:  # sent after this reader connected: live
                result.latencies_ns.append(now - stamp)
            if not result.first_stamp_ns or stamp < result.first_stamp_ns:
                result.first_stamp_ns = stamp
            result.last_receipt_ns = max(result.last_receipt_ns, now)

    def fail(self, message: str) -> None:
        if len(self.result.errors) < 20:
            self.result.errors.append(message)


class SSEClient(asyncio.Protocol):
    """One reader on a raw connection: an HTTP/1.1 request, the response head, then the
    body (de-chunked here) fed to its `Reader`. No HTTP client library between: the load
    generator must cost less than what it measures."""

    def __init__(self, reader: Reader, request: bytes, kind: str, expect: int, done, head_seen):
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


async def read_stream(
    method: str,
    url: str,
    kind: str,
    result: Result,
    body: bytes | None,
    expect_events: int,
    head_seen,
    connecting: asyncio.Semaphore | None,
) -> None:
    reader = Reader(kind, result)
    host_port, _, path = url.split("://", 1)[1].partition("/")
    host, port = host_port.split(":")
    headers = f"Host: {host_port}\r\nAccept: text/event-stream\r\n"
    if body is not None:
        headers += (
            f"Content-Type: application/json\r\nAuthorization: Bearer bench\r\n"
            f"Content-Length: {len(body)}\r\n"
        )
    request = f"{method} /{path} HTTP/1.1\r\n{headers}\r\n".encode() + (body or b"")
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    seen = loop.create_future()

    def on_head() -> None:
        seen.set_result(None)
        head_seen()

    client = SSEClient(reader, request, kind, expect_events, done, on_head)

    async def connect() -> None:
        reader.started_ns = time.time_ns()
        await loop.create_connection(lambda: client, host, int(port))

    try:
        if connecting is None:  # a flash crowd: every reader at once
            await connect()
        else:
            async with connecting:  # like browsers arriving, not a SYN flood
                await connect()
                await asyncio.wait([seen, done], return_when=asyncio.FIRST_COMPLETED)
        await done
    except OSError as e:
        reader.fail(f"{type(e).__name__}: {e}")
        return
    if kind == "ids" and not reader.done:
        reader.fail("stream ended without [DONE]")
    if kind == "seq" and reader.expect < expect_events:
        reader.fail(f"got {reader.expect} of {expect_events} messages")


async def run_readers(
    targets: list[tuple[str, str, bytes | None]], kind: str, expect_events: int, ready, flash
) -> Result:
    """Open every reader (paced, or all at once for a flash crowd), say so on `ready` when
    all have their response head, then read to the end."""
    result = Result(readers=len(targets))
    connected = asyncio.Event()
    gate = [len(targets)]

    def head_seen() -> None:
        gate[0] -= 1
        if gate[0] == 0:
            connected.set()

    connecting = None if flash else asyncio.Semaphore(CONNECTING)
    cpu0 = cpu_seconds()
    tasks = [
        asyncio.create_task(
            read_stream(method, url, kind, result, body, expect_events, head_seen, connecting)
        )
        for method, url, body in targets
    ]
    waiter = asyncio.create_task(connected.wait())
    await asyncio.wait([waiter, asyncio.gather(*tasks)], return_when=asyncio.FIRST_COMPLETED)
    result.connected_at = time.time()
    ready.send(("connected", result.connected_at))
    await asyncio.gather(*tasks)
    waiter.cancel()
    result.cpu_seconds = cpu_seconds() - cpu0
    return result


def worker(targets, kind, expect_events, conn, flash=False) -> None:
    """Entry point of one load-generator process."""
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    result = run(run_readers(targets, kind, expect_events, conn, flash))
    conn.send(("result", result))
    conn.close()
