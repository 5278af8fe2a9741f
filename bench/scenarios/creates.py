"""Creates: open-loop POSTs of 1-token requests at fixed rates; and how long a stop takes
to close the upstream connection."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from measure import cpu_of, pct, speed_probe
from wire import Poster

from scenarios.sustained import BODY, lag_between, loop_lag

CREATE_RATES = (100, 250, 500, 750, 1000)


def create_rates(server, rates=CREATE_RATES, seconds: float = 4) -> list[dict]:
    """Open-loop creates of 1-token requests at each rate, with the server's CPU per create
    (end to end: the create, the upstream call, the final durable write)."""
    out = []
    for rate in rates:
        cpu0 = cpu_of(server.pids())
        figures = asyncio.run(create_rate(server.url, rate, seconds))
        time.sleep(0.5)  # the last requests end
        cpu = cpu_of(server.pids()) - cpu0
        figures["cpu_ms_per_create"] = round(cpu / (rate * seconds) * 1000, 3)
        print("creates", figures, flush=True)
        out.append(figures)
    return out


async def create_rate(base: str, rate: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    poster = Poster(base, "/v1/stream-chatgpt", orjson.dumps(BODY))
    async with aiohttp.ClientSession() as s:
        lag0 = await loop_lag(s, base)

        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            if await poster.post() != 200:
                errors += 1
            latencies.append((time.perf_counter() - t) * 1000)

        tasks = [asyncio.create_task(speed_probe())]  # the host's speed meanwhile
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        probe, *_ = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        lag = lag_between(lag0, await loop_lag(s, base))
    poster.close()
    return {
        "rate": rate,
        "achieved": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "p50_ms": round(pct(latencies, 0.5), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        **lag,
        "probe_ms": probe,
    }


async def _until(check, interval: float) -> None:
    while not await check():
        await asyncio.sleep(interval)


async def stop_latency(base: str, mock_url: str, n: int) -> dict:
    """Stop call → the mock sees the upstream connection closed, `n` times."""
    model = "mock?tokens=100000&delay_ms=20"
    body = {"messages": [{"role": "user", "content": "x"}], "model": model}
    out = []
    async with aiohttp.ClientSession() as s:

        async def streaming(urls: dict) -> bool:
            async with s.get(urls["status_url"]) as resp:
                return (await resp.json())["status"] == "streaming"

        async def closed_at() -> float | None:
            async with s.get(f"{mock_url}/_mock/requests") as resp:
                seen_all = (await resp.json())["requests"]
            [seen] = [r for r in seen_all if r["model"] == model]
            return seen["closed_at"]

        for _ in range(n):
            async with s.delete(f"{mock_url}/_mock/requests"):
                pass
            async with s.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                urls = (await resp.json())["endpoints"]
            await _until(lambda urls=urls: streaming(urls), 0.01)
            t0 = time.time()
            async with s.post(urls["stop_url"]) as resp:
                await resp.read()
            await _until(closed_at, 0.005)
            out.append((await closed_at() - t0) * 1000)
    return {
        "n": n,
        "p50_ms": round(pct(out, 0.5), 2),
        "p99_ms": round(pct(out, 0.99), 2),
        "max_ms": round(max(out), 2),
    }
