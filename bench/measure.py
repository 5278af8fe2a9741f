"""What every scenario of a run measures with: the stream shape, the load generators (one
process per share of the readers), their figures summed up, and the servers' CPU and RSS."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import sys
import threading
from pathlib import Path

from load import cpu_seconds, rss_bytes, worker

TOKENS, DELAY_MS = 100, 20
EVENTS_PER_STREAM = TOKENS + 3  # role chunk, tokens, finish, [DONE] (no usage asked for)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(values, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of these processes."""
    return sum(cpu_seconds(pid) for pid in pids)


def rss_of(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


class PeakRss:
    """The highest RSS of a server's processes while a block runs (sampled every 100 ms)."""

    def __init__(self, pids):
        self.pids = pids  # a callable: a server's processes may come and go
        self.value = rss_of(pids())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.value = max(self.value, rss_of(self.pids()))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_generators(targets: list, kind: str, expect: int, processes: int, flash: bool = False):
    """Readers split over `processes` load-generator processes (each connects its share
    paced, or all at once for a flash crowd); returns the processes and their pipes."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for share in (targets[i::processes] for i in range(processes)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(share, kind, expect, child, flash))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    return procs, pipes


def collect(procs, pipes) -> list:
    """Every generator's `Result`, once each has read to the end."""
    results = []
    for pipe in pipes:
        while (message := pipe.recv())[0] != "result":
            pass
        results.append(message[1])
    for proc in procs:
        proc.join()
    return results


def wait_connected(pipes) -> float:
    """When the last generator had all its readers connected."""
    times = []
    for pipe in pipes:
        tag, value = pipe.recv()
        assert tag == "connected"
        times.append(value)
    return max(times)


def span_s(results) -> float:
    """First token sent → last token received, by any reader."""
    first = min(r.first_stamp_ns for r in results if r.first_stamp_ns)
    return round((max(r.last_receipt_ns for r in results) - first) / 1e9, 3)


def summarize(results, readers: int, expected_events: int, point=(0, 0), wall=0.0, cpu=0.0) -> dict:
    latencies = [x / 1e6 for r in results for x in r.latencies_ns]
    first_bytes = [x / 1e6 for r in results for x in r.first_byte_ns]
    errors = [e for r in results for e in r.errors]
    events = sum(r.events for r in results)
    return {
        "streams": point[0],
        "per_stream": point[1],
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "cpu_us_per_event": round(cpu / max(1, events) * 1e6, 1),
        "readers": readers,
        "events": events,
        "events_expected": expected_events,
        "complete": events == expected_events and not errors,
        "errors": errors[:5],
        "p50_ms": round(pct(latencies, 0.50), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        "max_ms": round(max(latencies) if latencies else float("nan"), 2),
        "loadgen_cpu_s": round(sum(r.cpu_seconds for r in results), 2),
        "first_byte_p50_ms": round(pct(first_bytes, 0.50), 2),
        "first_byte_p99_ms": round(pct(first_bytes, 0.99), 2),
        "span_s": span_s(results),
    }


# This VM's host sometimes makes the kernel's file work several times dearer (a file made,
# written and removed: ~35 µs of CPU, then 130-500 µs for minutes), which offloadd pays and
# Nchan does not: each create figure carries `probe_ms` — a fixed CPU-bound loop (~45 ms)
# and 100 files made, written and removed in the data's filesystem, CPU µs each — timed in
# a process of its own, so a figure made while the host was slow says so.
PROBE = """import os, tempfile, time
t = time.process_time()
for i in range(2_000_000): pass
loop = (time.process_time() - t) * 1000
d = tempfile.mkdtemp(dir=%r)
t = time.process_time()
for i in range(100):
    fd = os.open(f"{d}/{i}", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * 300)
    os.close(fd)
for i in range(100):
    os.unlink(f"{d}/{i}")
print(round(loop, 1), round((time.process_time() - t) * 1e4))
os.rmdir(d)
"""


async def speed_probe() -> dict:
    """The probe's figures now: `loop_ms` (CPU) and `file_us` (the kernel's file work)."""
    here = str(Path(__file__).resolve().parent / "out")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE % here, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    loop, file = (out or b"0 0").split()
    return {"loop_ms": float(loop), "file_us": int(file)}
