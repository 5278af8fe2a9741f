"""A crowd collapsed by the shipped nginx config (issue 24, item 3): 200 long-poll readers
on the tail of one live answer, and how many of their requests reach offloadd per
offset, counted from offloadd's own access log."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import orjson
from test_nginx import nginx_conf

from helpers import file_of, free_port, require_binary

READERS = 200


async def _nginx(tmp_path, backend: int, data) -> tuple[asyncio.subprocess.Process, str]:
    binary = require_binary("nginx", "nginx")
    port, folder = free_port(), tmp_path / "nginx"
    folder.mkdir()
    conf = nginx_conf(folder, port, backend, data)
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"
    )
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return proc, f"http://127.0.0.1:{port}"
            except OSError:
                await asyncio.sleep(0.05)


async def _follow(http: aiohttp.ClientSession, url: str, offset: str) -> tuple[bytes, int]:
    """Long-poll as the protocol's clients do, from `offset` until the answer is closed."""
    got, cursor, hits = b"", None, 0
    while True:
        query = f"offset={offset}&live=long-poll" + (f"&cursor={cursor}" if cursor else "")
        async with http.get(f"{url}?{query}") as resp:
            assert resp.status in (200, 204), await resp.text()
            got += await resp.read()
            hits += resp.headers.get("X-Cache-Status") == "HIT"
            offset = resp.headers["Stream-Next-Offset"]
            cursor = resp.headers.get("Stream-Cursor", cursor)
            if resp.headers.get("Stream-Closed") == "true":
                return got, hits


async def test_a_crowd_of_long_pollers_costs_offloadd_a_request_or_so_per_offset(spawn, tmp_path):
    data = tmp_path / "data"
    daemon = await spawn("serve", "--data", str(data), "--upstream-url", "mock", "--no-auth")
    proc, base = await _nginx(tmp_path, daemon.port, data)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            body = {
                "model": "mock?tokens=40&delay_ms=60&wait_ms=1000",
                "messages": [{"role": "user", "content": "a crowd"}],
            }
            async with http.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                url = (await resp.json())["endpoints"]["stream_events_url"]
            async with http.get(f"{url}?offset=now") as resp:
                start = resp.headers["Stream-Next-Offset"]
            async with asyncio.timeout(60):
                results = await asyncio.gather(*(_follow(http, url, start) for _ in range(READERS)))
        raw = file_of(data, url).read_bytes()
        skipped = int(start.split("_")[1])
        assert all(raw[:skipped] + got == raw for got, _ in results)
        assert sum(hits for _, hits in results) > 0
    finally:
        proc.terminate()
        await proc.wait()
    polls = Counter(
        line["offset"]
        for text in daemon.output.decode().splitlines()
        if '"live":"long-poll"' in text
        for line in [orjson.loads(text[text.index("{") :])]
    )
    steps = len(polls)
    assert steps >= 2, polls  # the answer took several long-polls to follow
    # each offset reached offloadd once, or a few times (a 204 of a running answer is
    # not cached), never once per reader
    assert max(polls.values()) <= 5, polls
    assert sum(polls.values()) <= 3 * steps < READERS, polls
