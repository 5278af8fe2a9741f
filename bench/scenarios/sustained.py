"""Creates at a steady rate for a minute, reported per 10-s window, on a data directory that
already holds a hundred thousand answers (as a server's after a busy day); and the event
loop's lag (`/metrics`) during each load point.

The full directory is made once under `bench/out/` and kept for later runs: answers are
copies of one real answer's two files (made by the daemon under test), under new uuids and
times spread over the day before, written straight to the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from measure import cpu_of, pct, speed_probe
from wire import Poster

FILLED_ANSWERS = 100_000
BODY = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=1"}


def filled_directory(out: Path, answers: int = FILLED_ANSWERS) -> Path:
    """The kept data directory for sustained runs (filled by `fill` on its first use)."""
    return out / f"filled-{answers}"


async def fill(base: str, data: Path, answers: int = FILLED_ANSWERS) -> int:
    """Bring `data` (served at `base`) to `answers` answers; how many were written now."""
    done = data / ".bench-filled"
    have = int(done.read_text()) if done.exists() else 0
    if have >= answers:
        return 0
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/stream-chatgpt", json=BODY) as resp:
            urls = (await resp.json())["endpoints"]
        async with s.get(urls["stream_events_url"]) as resp:
            await resp.read()  # to its end: the answer is final
    rel = urls["status_url"].split("/r/", 1)[1].removesuffix(".json")
    old_uuid, old_stamp = rel.rsplit("/", 1)[1], rel.split("/", 1)[1].rsplit("/", 1)[0]
    files = {s: (data / f"{rel}.{s}").read_bytes() for s in ("json", "txt")}
    start = time.time() - 86_400
    for i in range(have, answers):
        when = time.gmtime(start + i * 86_400 / answers)
        stamp, new = time.strftime("%Y/%m/%d/%H/%M/%S", when), str(uuid.uuid4())
        folder = data / "pub" / stamp
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, text in files.items():
            copy = text.replace(old_uuid.encode(), new.encode())
            with open(folder / f"{new}.{suffix}", "wb") as f:
                f.write(copy.replace(old_stamp.encode(), stamp.encode()))
        if i % 10_000 == 0:
            done.write_text(str(i))
    done.write_text(str(answers))
    os.sync()
    return answers - have


def trim(data: Path, since: float) -> int:
    """Remove the answers made since `since` (a run's), newest folders first; how many
    second-folders went."""
    first = time.strftime("%Y/%m/%d/%H/%M/%S", time.gmtime(since))
    removed = 0
    for scope in ("pub", "priv"):
        for folder in _newest_first(data / scope, 6):
            if folder.relative_to(data / scope).as_posix() < first:
                break
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def reset(data: Path) -> None:
    """Forget the daemons of earlier runs (whose answers `trim` removed): a daemon killed at
    the end of a run that fell behind leaves claims, whose takeover the next run would pay."""
    for name in ("run", "owners", "stop"):
        shutil.rmtree(data / ".offloadd" / name, ignore_errors=True)


def _newest_first(root: Path, depth: int):
    """The folders `depth` levels below `root` (YYYY/MM/DD/HH/MM/SS), newest first."""
    if depth == 0:
        yield root
        return
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in sorted(os.listdir(root), reverse=True):
            yield from _newest_first(root / name, depth - 1)


async def loop_lag(s: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The lag figures of the daemon that answers (one worker's, with `--workers 2`)."""
    async with s.get(f"{base}/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("offloadd_loop_"):
            out[name.removeprefix("offloadd_loop_")] = float(value)
    return out


def lag_between(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Mean lag and stalls (over 5 ms) between two readings; the longest stall so far."""
    n = b.get("lag_seconds_count", 0) - a.get("lag_seconds_count", 0)
    mean = (b.get("lag_seconds_sum", 0) - a.get("lag_seconds_sum", 0)) / n if n > 0 else 0
    return {
        "lag_mean_ms": round(mean * 1000, 2),
        "stalls": int(b.get("stalls_total", 0) - a.get("stalls_total", 0)),
        "lag_max_ms_so_far": round(b.get("lag_max_seconds", 0) * 1000, 1),
    }


async def steady(server, rate: int, seconds: float = 60, window: float = 10) -> dict:
    """Open-loop creates at `rate` for `seconds`: per window, achieved rate, p50/p99 of
    the creates sent in it, the server's CPU per create and the loop's lag."""
    sent: list[tuple[float, float, bool]] = []  # send offset, latency ms, ok
    marks: dict[int, tuple[float, dict]] = {}  # CPU seconds and lag at each window's edge
    probes: dict[int, float] = {}
    poster = Poster(server.url, "/v1/stream-chatgpt", orjson.dumps(BODY))
    async with aiohttp.ClientSession() as s:

        async def one(at: float) -> None:
            t = time.perf_counter()
            ok = await poster.post() == 200
            sent.append((at, (time.perf_counter() - t) * 1000, ok))

        async def edge(k: int) -> None:  # CPU read at once: a late lag reading matters less
            cpu = cpu_of(server.pids())
            marks[k] = (cpu, await loop_lag(s, server.url))
            probes[k] = await speed_probe()  # the host's speed during window k + 1

        await edge(0)
        tasks, start, edges = [], time.perf_counter(), 1
        for i in range(int(rate * seconds)):
            at = i / rate
            if at >= edges * window:
                tasks.append(asyncio.create_task(edge(edges)))
                edges += 1
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.5)  # the last requests end
        await edge(edges)
    poster.close()
    windows = _windows(sent, [marks[k] for k in sorted(marks)], window)
    for w in windows:
        w["probe_ms"] = probes.get(w["window"] - 1)
    return {"rate": rate, "windows": windows}


def _windows(sent, marks, window: float) -> list[dict]:
    out = []
    for w in range(len(marks) - 1):
        mine = [(lat, ok) for at, lat, ok in sent if w * window <= at < (w + 1) * window]
        latencies = [lat for lat, _ in mine]
        (cpu0, lag0), (cpu1, lag1) = marks[w], marks[w + 1]
        out.append(
            {
                "window": w + 1,
                "errors": sum(not ok for _, ok in mine),
                "p50_ms": round(pct(latencies, 0.5), 2),
                "p99_ms": round(pct(latencies, 0.99), 2),
                "cpu_ms_per_create": round((cpu1 - cpu0) / max(1, len(mine)) * 1000, 3),
                **lag_between(lag0, lag1),
            }
        )
    return out
