"""Fan-out through offloadd: readers connected first (paced), a flash crowd onto live
streams, and the floor (readers straight on the mock upstream)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from measure import (
    DELAY_MS,
    EVENTS_PER_STREAM,
    TOKENS,
    PeakRss,
    collect,
    cpu_of,
    rss_of,
    run_generators,
    summarize,
    wait_connected,
)

# A flash crowd: streams already live, then every reader connects at once (no pacing)
FLASH_TOKENS, FLASH_AFTER_S = 200, 1.0  # 4 s streams; the crowd arrives 1 s in


async def create_streams(base: str, count: int, model: str) -> list[str]:
    body = {"messages": [{"role": "user", "content": "bench"}], "model": model}
    async with aiohttp.ClientSession() as s:

        async def one() -> str:
            async with s.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                return (await resp.json())["endpoints"]["stream_events_url"]

        return await asyncio.gather(*(one() for _ in range(count)))


def delivery(server, streams: int, per: int) -> dict:
    """`streams` × `per` readers, all connected before the first token is sent."""
    readers = streams * per
    wait_ms = 3000 + readers * 3  # the readers (and their generators) connect first
    model = f"mock?tokens={TOKENS}&delay_ms={DELAY_MS}&stamp=1&wait_ms={wait_ms:.0f}"
    urls = asyncio.run(create_streams(server.url, streams, model))
    first_token = time.time() + wait_ms / 1000  # at the earliest
    rss0 = rss_of(server.pids())
    targets = [("GET", url, None) for url in urls for _ in range(per)]
    procs, pipes = run_generators(targets, "ids", EVENTS_PER_STREAM, 2 if readers > 1000 else 1)
    connected = wait_connected(pipes)
    # CPU counted from 0.2 s before the first token, as Nchan's from 0.2 s before its
    # publisher starts: the idle wait before is the same for both, and not per event
    time.sleep(max(0.0, first_token - 0.2 - time.time()))
    rss1, cpu0, t0 = rss_of(server.pids()), cpu_of(server.pids()), time.time()
    with PeakRss(server.pids) as peak:
        results = collect(procs, pipes)
    wall, cpu = time.time() - t0, cpu_of(server.pids()) - cpu0
    out = summarize(results, readers, readers * EVENTS_PER_STREAM, (streams, per), wall, cpu)
    out.update(
        rss_per_reader_kb=round((rss1 - rss0) / readers / 1024, 1),
        rss_streaming_per_reader_kb=round((peak.value - rss0) / readers / 1024, 1),
        connected_before_first_token=connected * 1e9
        < min(r.first_stamp_ns for r in results if r.first_stamp_ns),
    )
    return out


def flash(server, streams: int, readers: int) -> dict:
    """Streams already live, then every reader at once; each gets the whole stream (the
    replay of what was sent before it connected, then live events, which are timed)."""
    model = f"mock?tokens={FLASH_TOKENS}&delay_ms={DELAY_MS}&stamp=1"
    urls = asyncio.run(create_streams(server.url, streams, model))
    time.sleep(FLASH_AFTER_S)  # the crowd arrives this far into the streams
    targets = [("GET", urls[i % streams], None) for i in range(readers)]
    cpu0, t0 = cpu_of(server.pids()), time.time()
    procs, pipes = run_generators(targets, "ids", FLASH_TOKENS + 3, 2, flash=True)
    results = collect(procs, pipes)
    wall, cpu = time.time() - t0, cpu_of(server.pids()) - cpu0
    return summarize(results, readers, readers * (FLASH_TOKENS + 3), (streams, readers), wall, cpu)


def floor(mock_url: str, streams: int) -> dict:
    """`streams` readers straight on the mock upstream: what the loopback itself costs."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "model": f"mock?tokens={TOKENS}&delay_ms={DELAY_MS}&stamp=1",
        }
    ).encode()
    targets = [("POST", f"{mock_url}/v1/chat/completions", body)] * streams
    procs, pipes = run_generators(targets, "chunks", 0, 1)
    wait_connected(pipes)
    results = collect(procs, pipes)
    return summarize(results, streams, streams * (TOKENS + 4))


def idle_cpu(server, seconds: float = 3) -> float:
    """The server's CPU per second while nothing runs."""
    cpu0 = cpu_of(server.pids())
    time.sleep(seconds)  # time is what is measured
    return round((cpu_of(server.pids()) - cpu0) / seconds, 4)
