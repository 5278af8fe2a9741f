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

import aiohttp

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
            result.latencies_ns.append(now - stamp)
            if not result.first_stamp_ns or stamp < result.first_stamp_ns:
                result.first_stamp_ns = stamp
            result.last_receipt_ns = max(result.last_receipt_ns, now)

    def fail(self, message: str) -> None:
        if len(self.result.errors) < 20:
            self.result.errors.append(message)


async def read_stream(
    session,
    method: str,
    url: str,
    kind: str,
    result: Result,
    body: bytes | None,
    connected: asyncio.Event,
    expect_events: int,
    gate: list[int],
    connecting: asyncio.Semaphore,
) -> None:
    reader = Reader(kind, result)
    headers = {"Accept": "text/event-stream"}
    if body is not None:
        headers = {**headers, "Content-Type": "application/json", "Authorization": "Bearer bench"}
    try:
        async with connecting:  # like browsers arriving, not a SYN flood
            resp = await session.request(method, url, data=body, headers=headers)
        async with resp:
            if resp.status != 200:
                reader.fail(f"HTTP {resp.status}")
                return
            gate[0] -= 1
            if gate[0] == 0:
                connected.set()
            async for piece in resp.content.iter_any():
                reader.feed(piece, time.time_ns())
                if kind == "seq" and reader.expect >= expect_events:
                    break
    except (TimeoutError, aiohttp.ClientError) as e:
        reader.fail(f"{type(e).__name__}: {e}")
        return
    if kind == "ids" and not reader.done:
        reader.fail("stream ended without [DONE]")
    if kind == "seq" and reader.expect < expect_events:
        reader.fail(f"got {reader.expect} of {expect_events} messages")


async def run_readers(
    targets: list[tuple[str, str, bytes | None]], kind: str, expect_events: int, ready, go
) -> Result:
    """Open every reader, say so on `ready`, then read to the end."""
    result = Result(readers=len(targets))
    connected = asyncio.Event()
    gate = [len(targets)]
    connecting = asyncio.Semaphore(CONNECTING)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600, sock_connect=60)
    cpu0 = cpu_seconds()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(
                read_stream(
                    session,
                    method,
                    url,
                    kind,
                    result,
                    body,
                    connected,
                    expect_events,
                    gate,
                    connecting,
                )
            )
            for method, url, body in targets
        ]
        waiter = asyncio.create_task(connected.wait())
        await asyncio.wait([waiter, asyncio.gather(*tasks)], return_when=asyncio.FIRST_COMPLETED)
        result.connected_at = time.time()
        ready.send(("connected", result.connected_at))
        await asyncio.gather(*tasks)
    result.cpu_seconds = cpu_seconds() - cpu0
    return result


def worker(targets, kind, expect_events, conn) -> None:
    """Entry point of one load-generator process."""
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    result = run(run_readers(targets, kind, expect_events, conn, None))
    conn.send(("result", result))
    conn.close()
