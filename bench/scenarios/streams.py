"""Application streams (issue 25, item 7): offloadd against Electric's reference server
(`@durable-streams/server` 0.3.7, in memory, `tests/js/reference-server.mjs`) in the
same run, by the protocol both speak at `/v1/stream/<name>`:

- appends a second: small JSON messages, closed loop (each writer sends its next append
  when the last is answered), 16 writers on 1 stream and 100 writers on 100 streams,
  without and with idempotent-producer headers (one producer per writer);
- append → live reader: 10 long-poll readers of one JSON stream, an append stamped with
  its send time every 10 ms; p50/p99 of receipt − stamp over every message of every reader;
- catch-up: one reader following offsets from the start of a 100 MiB stream to its tail.

The writers and readers are the load generator's (`load.py`), in processes of their own."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import time
from pathlib import Path

import aiohttp
from load import catch_up, job, run_appenders
from measure import collect, cpu_of, run_generators, summarize, wait_connected

from realworld import free_port, process_tree

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "js" / "reference-server.mjs"
JSON = {"Content-Type": "application/json"}
OCTETS = {"Content-Type": "application/octet-stream"}
APPEND_SHAPES = ((1, 16), (100, 100))  # streams, writers in all
LIVE_READERS, LIVE_EVERY_MS = 10, 10
BLOCK = 512 * 1024  # the catch-up stream is written in blocks under offloadd's --max-body


class Reference:
    """The reference server on a free loopback port (`node`, as tests/js has it pinned)."""

    def __init__(self) -> None:
        port = free_port()
        self.proc = subprocess.Popen(
            ["node", str(REFERENCE), "--port", str(port)], stdout=subprocess.PIPE
        )
        assert self.proc.stdout
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the reference server did not start: {self.url!r}")

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


async def _create(base: str, names: list[str], headers: dict) -> list[str]:
    async with aiohttp.ClientSession() as http:
        for name in names:
            async with http.put(f"{base}/v1/stream/{name}", headers=headers) as resp:
                assert resp.status == 201, await resp.text()
    return [f"{base}/v1/stream/{name}" for name in names]


def _in_process(make):
    """Run a load-generator coroutine in a process of its own; its `Result`."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=job, args=(make, child))
    proc.start()
    [result] = collect([proc], [parent])
    return result


def appends(base: str, pids, shape: tuple[int, int], producer: bool, seconds: float) -> dict:
    count, writers = shape
    tag = f"a{time.time_ns()}"
    names = asyncio.run(_create(base, [f"{tag}-{i}" for i in range(count)], JSON))
    urls = [names[w % count] for w in range(writers)]
    cpu0 = cpu_of(pids())
    result = _in_process(lambda: run_appenders(urls, seconds, producer))
    cpu = cpu_of(pids()) - cpu0
    return {
        "streams": count,
        "writers": writers,
        "producer": producer,
        "appends_per_s": round(result.events / result.wall_s, 1),
        "errors": result.errors[:3],
        "server_cpu_us_per_append": round(cpu / max(1, result.events) * 1e6, 1),
        "loadgen_cpu_s": round(result.cpu_seconds, 2),
    }


async def _paced_appends(url: str, count: int) -> None:
    """`count` messages, one every LIVE_EVERY_MS, each stamped when sent; then the close."""
    async with aiohttp.ClientSession() as http:
        start = time.monotonic()
        for i in range(count):
            delay = start + i * LIVE_EVERY_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = b'{"i":%d,"t":%d}' % (i, time.time_ns())
            async with http.post(url, data=body, headers=JSON) as resp:
                assert resp.status in (200, 204), await resp.text()
        async with http.post(url, headers={**JSON, "Stream-Closed": "true"}) as resp:
            assert resp.status in (200, 204), await resp.text()


def live(base: str, count: int) -> dict:
    [url] = asyncio.run(_create(base, [f"live{time.time_ns()}"], JSON))
    targets = [("GET", url, None)] * LIVE_READERS
    procs, pipes = run_generators(targets, "json", count, 1, flash=True)
    wait_connected(pipes)  # every reader has its first (empty) answer
    asyncio.run(_paced_appends(url, count))
    results = collect(procs, pipes)
    out = summarize(results, LIVE_READERS, LIVE_READERS * count, (1, LIVE_READERS))
    keys = ("complete", "errors", "p50_ms", "p99_ms", "max_ms", "events", "events_expected")
    return {key: out[key] for key in keys}


async def _fill(url: str, size: int) -> None:
    block = bytes(range(256)) * (BLOCK // 256)
    async with aiohttp.ClientSession() as http:
        for _ in range(size // BLOCK):
            async with http.post(url, data=block, headers=OCTETS) as resp:
                assert resp.status in (200, 204), await resp.text()


def catch_up_read(base: str, mib: int) -> dict:
    [url] = asyncio.run(_create(base, [f"big{time.time_ns()}"], OCTETS))
    asyncio.run(_fill(url, mib * 2**20))
    result = _in_process(lambda: catch_up(url))
    return {
        "mib": mib,
        "complete": result.body_bytes == mib * 2**20 and not result.errors,
        "errors": result.errors[:3],
        "requests": result.requests,
        "mib_per_s": round(result.body_bytes / 2**20 / result.wall_s, 1),
    }


def measure(base: str, pids, quick: bool) -> dict:
    seconds = 1 if quick else 3
    appends(base, pids, APPEND_SHAPES[1], False, 0.5)  # a warm-up (Node's JIT), not kept
    out: dict = {"appends": []}
    for producer in (False, True):
        for shape in APPEND_SHAPES:
            figures = appends(base, pids, shape, producer, seconds)
            print("appends", figures, flush=True)
            out["appends"].append(figures)
    out["live"] = live(base, 50 if quick else 300)
    out["catch_up"] = catch_up_read(base, 8 if quick else 100)
    print("streams", out["live"], out["catch_up"], flush=True)
    return out


def run(offloadd, quick: bool) -> dict:
    """Both servers, one after the other, in this run."""
    reference = Reference()
    try:
        theirs = measure(reference.url, reference.pids, quick)
    finally:
        reference.stop()
    return {"reference": theirs, "offloadd": measure(offloadd.url, offloadd.pids, quick)}
