"""Application streams against Electric's reference server, in the same run (issue 25.7).

    python bench/streams.py [--runs 3] [--seconds 4] [--catch-up-mib 100] [--out FILE]

Starts `offloadd serve --no-auth` (data under bench/out/, on the repository's disk) and
`node tests/js/reference-server.mjs` (in memory), then for each, with one aiohttp client
process (it shares the machine's cores with the servers):

1. appends a second, small JSON messages (`{"n": i}`): 1 stream with 16 writers, and
   100 streams with one writer each; without and with idempotent-producer headers;
2. append → live reader: one SSE reader on a stream, a writer appending a stamped
   message every 20 ms; p50/p99 of receipt minus stamp;
3. catch-up read throughput of a stream of N MiB (read by following offsets).

Every figure is a median over the runs with its spread (min–max). offloadd syncs every
acknowledged append to disk (group commit); the reference server keeps streams in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}


async def start_offloadd(port: int, data: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offloadd", "serve", "--data", str(data), "--no-auth",
        "--upstream-url", "mock", "--port", str(port), "--max-body", str(2 * 1024 * 1024),
        "--log-level", "WARNING", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    while b"listening" not in await proc.stdout.readline():
        pass
    return proc


async def start_reference(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "node", str(ROOT / "tests/js/reference-server.mjs"), "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    await proc.stdout.readline()
    return proc


async def appends(http, base: str, streams: int, writers: int, producer: bool, secs: float):
    """Appends a second: `writers` clients in all, spread over `streams` streams."""
    tag = f"{time.time_ns()}"
    names = [f"{base}/v1/stream/a-{tag}-{i}" for i in range(streams)]
    for name in names:
        async with http.put(name, headers=JSON) as resp:
            assert resp.status == 201, await resp.text()
    done = 0
    stop = time.perf_counter() + secs

    async def writer(w: int) -> None:
        nonlocal done
        url, seq = names[w % streams], 0
        while time.perf_counter() < stop:
            headers = dict(JSON)
            if producer:
                headers.update({"Producer-Id": f"w{w}", "Producer-Epoch": "0"})
                headers["Producer-Seq"] = str(seq)
            async with http.post(url, data=orjson.dumps({"n": seq}), headers=headers) as resp:
                assert resp.status in (200, 204), await resp.text()
            seq += 1
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return done / (time.perf_counter() - began)


async def live_latency(http, base: str, count: int = 150) -> tuple[float, float]:
    """p50 and p99 (ms) from an append to an SSE reader receiving it."""
    url = f"{base}/v1/stream/live-{time.time_ns()}"
    async with http.put(url, headers=JSON) as resp:
        assert resp.status == 201
    got: list[float] = []

    async def reader() -> None:
        async with http.get(f"{url}?offset=-1&live=sse") as resp:
            buf = b""
            async for piece in resp.content.iter_any():
                now = time.perf_counter()
                buf += piece
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if event.startswith(b"event: data"):
                        data = b"".join(ln[5:] for ln in event.split(b"\n")[1:])
                        got.extend(now - m["t"] for m in orjson.loads(data))
                if len(got) >= count:
                    return

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.5)
    for i in range(count):
        body = orjson.dumps({"i": i, "t": time.perf_counter()})
        async with http.post(url, data=body, headers=JSON) as resp:
            assert resp.status in (200, 204)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(task, 10)
    ms = sorted(x * 1000 for x in got)
    return ms[len(ms) // 2], ms[int(len(ms) * 0.99) - 1]


async def catch_up(http, base: str, mib: int) -> float:
    """MiB/s reading a stream of `mib` MiB from the start, following offsets."""
    url = f"{base}/v1/stream/big-{time.time_ns()}"
    octets = {"Content-Type": "application/octet-stream"}
    async with http.put(url, headers=octets) as resp:
        assert resp.status == 201
    block = os.urandom(1024 * 1024)
    for _ in range(mib):
        async with http.post(url, data=block, headers=octets) as resp:
            assert resp.status == 204, await resp.text()
    began, offset, total = time.perf_counter(), "-1", 0
    while True:
        async with http.get(f"{url}?offset={offset}") as resp:
            body = await resp.read()
            total += len(body)
            offset = resp.headers["Stream-Next-Offset"]
            if "Stream-Up-To-Date" in resp.headers and total >= mib * 1024 * 1024:
                break
    return total / (1024 * 1024) / (time.perf_counter() - began)


async def measure(base: str, args) -> dict:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        out = {}
        for producer in (False, True):
            suffix = " +producer" if producer else ""
            s = args.seconds
            out[f"appends/s, 1 stream{suffix}"] = await appends(http, base, 1, 16, producer, s)
            out[f"appends/s, 100 streams{suffix}"] = await appends(
                http, base, 100, 100, producer, s
            )
        out["append→reader p50 ms"], out["append→reader p99 ms"] = await live_latency(http, base)
        out["catch-up MiB/s"] = await catch_up(http, base, args.catch_up_mib)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--catch-up-mib", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "STREAMS.md")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"offloadd": [], "reference 0.3.7": []}
    for run in range(args.runs):
        data = ROOT / "bench" / "out" / f"streams-{run}"
        servers = {
            "offloadd": (await start_offloadd(18701, data), "http://127.0.0.1:18701"),
            "reference 0.3.7": (await start_reference(18702), "http://127.0.0.1:18702"),
        }
        for name, (proc, base) in servers.items():
            runs[name].append(await measure(base, args))
            print(run, name, runs[name][-1], flush=True)
            proc.terminate()
            await proc.wait()
    args.out.write_text(render(runs, args))


def render(runs: dict[str, list[dict]], args) -> str:
    names = list(runs)
    lines = [
        "# Application streams: offloadd against the reference server",
        "",
        f"`python bench/streams.py --runs {args.runs} --seconds {args.seconds:g} "
        f"--catch-up-mib {args.catch_up_mib}` (see its docstring). Median of {args.runs} "
        "runs, spread min–max in brackets; the same client, machine and run for both.",
        "",
        "| figure | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for figure in runs[names[0]][0]:
        cells = []
        for name in names:
            values = [r[figure] for r in runs[name]]
            med = statistics.median(values)
            cells.append(f"{med:,.1f} ({min(values):,.1f}–{max(values):,.1f})")
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """offloadd answers an append only once it is on disk (`fdatasync` of the stream's data,
shared by the appends that arrived together; with producer headers the producer state is
also replaced and synced), and survives `kill -9` and power loss with every acknowledged
append; the reference server keeps streams in its process's memory. Catch-up reads come
from the page cache, 1 MiB per request. The load generator is Python on the same two
cores, shared with other work: compare the two columns of one run, not runs on
different days."""


if __name__ == "__main__":
    asyncio.run(main())
