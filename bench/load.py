"""The load generator: many SSE readers in one process, lean on purpose; and Durable
Streams long-poll readers, catch-up readers and appenders (on `exchange.py`).

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

from wire import SSEClient, drive, header

CONNECTING = 200  # connection attempts in flight per load-generator process
STAMP = re.compile(rb'"content":" ?(\d{19})"')
SEQ = re.compile(rb'"i":(\d+)')
MESSAGE = re.compile(rb'"i":(\d+),"t":(\d{19})')  # a JSON stream's stamped message


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
    requests: int = 0  # Durable Streams readers and appenders: requests made
    body_bytes: int = 0
    wall_s: float = 0.0  # appenders and catch-up readers: first request → last answer


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

    def messages(self, body: bytes, now: int) -> None:
        """A JSON stream's answer (`[{"i":n,"t":stamp},…]`): in order, each timed."""
        result = self.result
        for m in MESSAGE.finditer(body):
            seq, stamp = int(m[1]), int(m[2])
            if seq != self.expect:
                self.fail(f"expected message {self.expect}, got {seq}")
            self.expect = seq + 1
            result.events += 1
            result.latencies_ns.append(now - stamp)
            result.last_receipt_ns = max(result.last_receipt_ns, now)
            if not result.first_stamp_ns or stamp < result.first_stamp_ns:
                result.first_stamp_ns = stamp

    def fail(self, message: str) -> None:
        if len(self.result.errors) < 20:
            self.result.errors.append(message)


class LongPoll:
    """A Durable Streams reader as the protocol has it: long-poll from the start,
    following `Stream-Next-Offset` and `Stream-Cursor` until `Stream-Closed`. An answer's
    bodies are its transcript (SSE records, checked by id); a JSON stream's are messages."""

    def __init__(self, url: str, reader: Reader, head_seen, live=b"long-poll", catch_up=False):
        host_port, _, path = url.split("://", 1)[1].partition("/")
        self.request = f"GET /{path}?".encode(), f" HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode()
        self.reader, self.head_seen, self.live = reader, head_seen, live
        self.offset, self.cursor = b"-1", b""
        self.finished = self.up_to_date = False
        self.catching_up = catch_up  # first plain reads to the tail (so an empty stream answers)

    def next_request(self) -> bytes | None:
        if self.finished:
            return None
        query = b"offset=" + self.offset
        if self.live and not self.catching_up:
            query += b"&live=" + self.live + (b"&cursor=" + self.cursor if self.cursor else b"")
        return self.request[0] + query + self.request[1]

    def answer(self, status: int, head: bytes, body: bytes, now: int) -> None:
        result = self.reader.result
        result.requests += 1
        result.body_bytes += len(body)
        if self.head_seen:
            result.first_byte_ns.append(now - self.reader.started_ns)
            self.head_seen, seen = None, self.head_seen
            seen()
        if status not in (200, 204):
            self.fail(f"HTTP {status} {body[:60]!r}")
            return
        self.offset = header(head, b"stream-next-offset") or self.offset
        self.cursor = header(head, b"stream-cursor") or self.cursor
        if body:
            if self.reader.kind == "json":
                self.reader.messages(body, now)
            elif self.reader.kind == "ids":
                self.reader.feed(body, now)
        self.up_to_date = header(head, b"stream-up-to-date") == b"true"
        self.catching_up = self.catching_up and not self.up_to_date
        if header(head, b"stream-closed") == b"true" or (not self.live and self.up_to_date):
            self.finished = True

    def fail(self, message: str) -> None:
        self.reader.fail(message)
        self.finished = True


class Appender:
    """A writer appending small JSON messages to one stream, each as soon as the last was
    answered, until `deadline` (monotonic); with a producer id, as an idempotent producer
    (epoch 0, its sequence from 0)."""

    def __init__(self, url: str, result: Result, deadline: float, producer: str | None):
        host_port, _, path = url.split("://", 1)[1].partition("/")
        head = f"POST /{path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
        if producer:
            head += f"Producer-Id: {producer}\r\nProducer-Epoch: 0\r\n"
        self.head, self.producer = head.encode(), producer
        self.result, self.deadline, self.seq, self.finished = result, deadline, 0, False

    def next_request(self) -> bytes | None:
        if self.finished or time.monotonic() >= self.deadline:
            self.finished = True
            return None
        body = b'{"n":%d,"text":"a small message"}' % self.seq
        seq = b"Producer-Seq: %d\r\n" % self.seq if self.producer else b""
        return self.head + seq + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def answer(self, status: int, head: bytes, body: bytes, now: int) -> None:
        self.result.requests += 1
        if status in (200, 204):
            self.result.events += 1
            self.seq += 1
        else:
            self.fail(f"HTTP {status} {body[:80]!r}")

    def fail(self, message: str) -> None:
        if len(self.result.errors) < 20:
            self.result.errors.append(message)
        self.finished = True


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


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].split("/", 1)[0].split(":")
    return host, int(port)


async def read_durable(url: str, kind: str, result: Result, expect: int, head_seen) -> None:
    """One long-poll reader, all of it: a model answer's (`longpoll`: its transcript to
    `[DONE]`) or a JSON stream's (`json`: `expect` messages, numbered from 0)."""
    reader = Reader("ids" if kind == "longpoll" else kind, result)
    reader.started_ns = reader.connected_ns = time.time_ns()  # its arrival: later is live
    await drive(LongPoll(url, reader, head_seen, catch_up=kind == "json"), *_host_port(url))
    if kind == "longpoll" and not reader.done:
        reader.fail("stream ended without [DONE]")
    if kind == "json" and reader.expect != expect:
        reader.fail(f"got {reader.expect} of {expect} messages")


async def run_appenders(urls: list[str], seconds: float, producer: bool) -> Result:
    """One appender per URL (several may share a stream), for `seconds`."""
    result = Result(readers=len(urls))
    deadline, t0, cpu0 = time.monotonic() + seconds, time.monotonic(), cpu_seconds()
    ids = [f"w{i}" if producer else None for i in range(len(urls))]
    owners = [Appender(u, result, deadline, p) for u, p in zip(urls, ids, strict=True)]
    await asyncio.gather(*(drive(o, *_host_port(u)) for o, u in zip(owners, urls, strict=True)))
    result.wall_s, result.cpu_seconds = time.monotonic() - t0, cpu_seconds() - cpu0
    return result


async def catch_up(url: str) -> Result:
    """Catch-up reads of a stream from its start to its tail (`Stream-Up-To-Date`)."""
    result = Result(readers=1)
    reader = Reader("bytes", result)
    t0 = time.monotonic()
    await drive(LongPoll(url, reader, None, live=b""), *_host_port(url))
    result.wall_s = time.monotonic() - t0
    return result


def job(make, conn) -> None:
    """Entry point of a load-generator process that runs one coroutine (`make()`)."""
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    conn.send(("result", run(make())))
    conn.close()


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
            read_durable(url, kind, result, expect_events, head_seen)
            if kind in ("longpoll", "json")
            else read_stream(method, url, kind, result, body, expect_events, head_seen, connecting)
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
