"""offloadd's benchmarks, in one command: `python bench/run.py` (see bench/README.md).

Everything runs on loopback with the mock upstream's `stamp=1`, so each token
carries the time it was sent; latency is a reader's receipt time minus that.
nginx + Nchan runs beside offloadd in the same run, on the same event sequence.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import cpu_seconds, rss_bytes, worker  # noqa: E402

TOKENS, DELAY_MS = 100, 20
EVENTS_PER_STREAM = TOKENS + 3  # role chunk, tokens, finish, [DONE] (no usage asked for)
POINTS = [(10, 1), (10, 10), (40, 25), (100, 100)]
# A flash crowd: streams already live, then every reader connects at once (no pacing)
FLASH_POINTS = [(40, 1000), (100, 10000)]  # (streams, readers in all)
FLASH_TOKENS, FLASH_AFTER_S = 200, 1.0  # 4 s streams; the crowd arrives 1 s in


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(values, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Proc:
    """A server process started for the run, with its CPU and memory readable."""

    def __init__(self, args: list[str], ready: bytes, env: dict | None = None):
        self.p = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=raise_fd_limit,
        )
        deadline = time.time() + 30
        while ready not in (line := self.p.stdout.readline()):
            if not line or time.time() > deadline:
                raise RuntimeError(f"{args[0]} did not start: {line!r}")
        self._drain = multiprocessing.get_context("fork").Process(
            target=_drain, args=(self.p.stdout.fileno(),), daemon=True
        )
        self._drain.start()

    def pids(self) -> list[int]:
        pids, todo = [], [self.p.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except FileNotFoundError:
                pass
        return pids

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids())

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()


def _drain(fd: int) -> None:
    """The server's output, kept in a log beside the raw figures (what went wrong, if any)."""
    log = Path(tempfile.gettempdir()) / f"bench-{os.getppid()}-{fd}.log"
    with open(log, "ab") as out:
        while data := os.read(fd, 65536):
            out.write(data)


def run_generators(targets: list, kind: str, expect: int, processes: int, flash: bool = False):
    """Readers split over `processes` load-generator processes (each connects its share
    paced, or all at once for a flash crowd); returns the processes and their pipes."""
    ctx = multiprocessing.get_context("fork")
    shares = [targets[i::processes] for i in range(processes)]
    pipes, procs = [], []
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(share, kind, expect, child, flash))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    return procs, pipes


def collect(procs, pipes) -> list:
    results = []
    for pipe in pipes:
        while True:
            tag, value = pipe.recv()
            if tag == "result":
                results.append(value)
                break
    for proc in procs:
        proc.join()
    return results


def wait_connected(pipes) -> float:
    times = []
    for pipe in pipes:
        tag, value = pipe.recv()
        assert tag == "connected"
        times.append(value)
    return max(times)


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
        # first token sent → last token received, by any reader
        "span_s": round(
            (
                max(r.last_receipt_ns for r in results)
                - min(r.first_stamp_ns for r in results if r.first_stamp_ns)
            )
            / 1e9,
            3,
        ),
    }


# --- offloadd ----------------------------------------------------------------------------


async def create_streams(base: str, count: int, model: str) -> list[str]:
    body = {"messages": [{"role": "user", "content": "bench"}], "model": model}
    async with aiohttp.ClientSession() as s:

        async def one() -> str:
            async with s.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                return (await resp.json())["endpoints"]["stream_events_url"]

        return await asyncio.gather(*(one() for _ in range(count)))


def offloadd_delivery(server: Proc, base: str, streams: int, per: int) -> dict:
    readers = streams * per
    wait_ms = 3000 + readers * 3  # the readers (and their generators) connect first
    model = f"mock?tokens={TOKENS}&delay_ms={DELAY_MS}&stamp=1&wait_ms={wait_ms:.0f}"
    urls = asyncio.run(create_streams(base, streams, model))
    rss0 = server.rss()
    targets = [("GET", url, None) for url in urls for _ in range(per)]
    procs, pipes = run_generators(targets, "ids", EVENTS_PER_STREAM, 2 if readers > 1000 else 1)
    connected = wait_connected(pipes)
    rss1, cpu0, t0 = server.rss(), server.cpu(), time.time()
    with PeakRss(server) as peak:
        results = collect(procs, pipes)
    wall, cpu = time.time() - t0, server.cpu() - cpu0
    out = summarize(results, readers, readers * EVENTS_PER_STREAM, (streams, per), wall, cpu)
    out.update(
        rss_per_reader_kb=round((rss1 - rss0) / readers / 1024, 1),
        rss_streaming_per_reader_kb=round((peak.value - rss0) / readers / 1024, 1),
        connected_before_first_token=connected * 1e9
        < min(r.first_stamp_ns for r in results if r.first_stamp_ns),
    )
    return out


class PeakRss:
    """The highest RSS of a server while a block runs (sampled every 100 ms)."""

    def __init__(self, server: Proc):
        self.server, self.value = server, server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.value = max(self.value, self.server.rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def flash_model() -> str:
    return f"mock?tokens={FLASH_TOKENS}&delay_ms={DELAY_MS}&stamp=1"


def offloadd_flash(server: Proc, base: str, streams: int, readers: int) -> dict:
    """Streams already live, then every reader at once; each gets the whole stream (the
    replay of what was sent before it connected, then live events, which are timed)."""
    urls = asyncio.run(create_streams(base, streams, flash_model()))
    time.sleep(FLASH_AFTER_S)
    targets = [("GET", urls[i % streams], None) for i in range(readers)]
    cpu0, t0 = server.cpu(), time.time()
    procs, pipes = run_generators(targets, "ids", FLASH_TOKENS + 3, 2, flash=True)
    results = collect(procs, pipes)
    wall, cpu = time.time() - t0, server.cpu() - cpu0
    return summarize(results, readers, readers * (FLASH_TOKENS + 3), (streams, readers), wall, cpu)


def nchan_flash(nginx: subprocess.Popen, base: str, streams: int, readers: int) -> dict:
    run = f"f{int(time.time() * 1000)}"
    pids = nginx_workers(nginx.pid)
    publisher = multiprocessing.get_context("fork").Process(
        target=_publisher, args=(base, run, streams, time.time() + 0.05, FLASH_TOKENS)
    )
    publisher.start()
    time.sleep(FLASH_AFTER_S)
    targets = [("GET", f"{base}/sub/{run}c{i % streams}", None) for i in range(readers)]
    cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.time()
    procs, pipes = run_generators(targets, "seq", FLASH_TOKENS, 2, flash=True)
    results = collect(procs, pipes)
    publisher.join()
    wall, cpu = time.time() - t0, sum(cpu_seconds(p) for p in pids) - cpu0
    return summarize(results, readers, readers * FLASH_TOKENS, (streams, readers), wall, cpu)


def mock_floor(mock_url: str, streams: int) -> dict:
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


CREATE_RATES = (100, 250, 500, 750, 1000)


def create_rates(server: Proc, base: str) -> list[dict]:
    """Open-loop creates of 1-token requests at each rate, with the server's CPU per create
    (end to end: the create, the upstream call, the final durable write)."""
    out = []
    for rate in CREATE_RATES:
        cpu0 = server.cpu()
        figures = asyncio.run(create_rate(base, rate, 4))
        time.sleep(0.5)  # the last requests end
        figures["cpu_ms_per_create"] = round((server.cpu() - cpu0) / (rate * 4) * 1000, 3)
        print("creates", figures, flush=True)
        out.append(figures)
    return out


async def create_rate(base: str, rate: int, seconds: float) -> dict:
    body = {"messages": [{"role": "user", "content": "x"}], "model": "mock?tokens=1"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                async with s.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except aiohttp.ClientError:  # counted, and the run goes on
                errors += 1
            latencies.append((time.perf_counter() - t) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "achieved": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "p50_ms": round(pct(latencies, 0.5), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
    }


async def stop_latency(base: str, mock_url: str, n: int) -> dict:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "model": "mock?tokens=100000&delay_ms=20",
    }
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.delete(f"{mock_url}/_mock/requests"):
                pass
            async with s.post(f"{base}/v1/stream-chatgpt", json=body) as resp:
                urls = (await resp.json())["endpoints"]
            while True:
                async with s.get(urls["status_url"]) as resp:
                    if (await resp.json())["status"] == "streaming":
                        break
                await asyncio.sleep(0.01)
            t0 = time.time()
            async with s.post(urls["stop_url"]) as resp:
                await resp.read()
            while True:
                async with s.get(f"{mock_url}/_mock/requests") as resp:
                    seen_all = (await resp.json())["requests"]
                [seen] = [r for r in seen_all if r["model"] == body["model"]]
                if seen["closed_at"]:
                    out.append((seen["closed_at"] - t0) * 1000)
                    break
                await asyncio.sleep(0.005)
    return {
        "n": n,
        "p50_ms": round(pct(out, 0.5), 2),
        "p99_ms": round(pct(out, 0.99), 2),
        "max_ms": round(max(out), 2),
    }


# --- nginx + Nchan ---------------------------------------------------------------------------

NCHAN_CONF = """
load_module {module};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher; nchan_channel_id $1;
            nchan_message_buffer_length 500; nchan_message_timeout 10m;
        }}
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber eventsource; nchan_channel_id $1;
            nchan_subscriber_first_message oldest;
        }}
        location /static/ {{ alias {data}/; }}
    }}
}}
"""


def start_nginx(data: Path) -> tuple[subprocess.Popen, str, Path]:
    module = next(Path("/usr/lib/nginx/modules").glob("ngx_nchan_module.so"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    port = free_port()
    conf = tmp / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(user + NCHAN_CONF.format(module=module, tmp=tmp, port=port, data=data))
    proc = subprocess.Popen(
        [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-c",
            str(conf),
            "-p",
            str(tmp),
            "-g",
            "daemon off;",
        ],
        preexec_fn=raise_fd_limit,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}", tmp


def nginx_workers(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [master, *(int(c) for c in f.read().split())]


class _Drain(asyncio.Protocol):
    """Counts nginx's answers to the pipelined publishes (closing before the last one
    would drop the publishes nginx has not read yet)."""

    def __init__(self) -> None:
        self.answers, self.tail = 0, b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        self.answers += data.count(b"HTTP/1.1 ")
        self.tail = data[-8:]


async def publish(base: str, run: str, channels: int, start_at: float, tokens: int) -> None:
    """Every channel's messages on one kept-alive, pipelined connection each, written on
    one 20 ms tick: a publisher that keeps nginx's pace (an HTTP client making 5,000
    requests a second in Python does not), stamped when written."""
    loop = asyncio.get_running_loop()
    host, port = base.split("://")[1].split(":")
    transports, drains = [], []
    for _ in range(channels):
        transport, drain = await loop.create_connection(_Drain, host, int(port))
        transports.append(transport)
        drains.append(drain)
    for i in range(tokens):
        delay = start_at + i * DELAY_MS / 1000 - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for c, transport in enumerate(transports):
            body = f'{{"i":{i},"choices":[{{"delta":{{"content":" {time.time_ns()}"}}}}]}}'
            transport.write(
                f"POST /pub/{run}c{c} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                f"{body}".encode()
            )
    while any(d.answers < tokens for d in drains):
        await asyncio.sleep(0.05)
    for transport in transports:
        transport.close()


def _publisher(base: str, run: str, channels: int, start_at: float, tokens: int) -> None:
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    run_loop(publish(base, run, channels, start_at, tokens))


def nchan_delivery(nginx: subprocess.Popen, base: str, streams: int, per: int) -> dict:
    readers = streams * per
    run = f"r{int(time.time() * 1000)}"  # fresh channels: none holds an earlier run's messages
    targets = [("GET", f"{base}/sub/{run}c{c}", None) for c in range(streams) for _ in range(per)]
    procs, pipes = run_generators(targets, "seq", TOKENS, 2 if readers > 1000 else 1)
    wait_connected(pipes)
    pids = nginx_workers(nginx.pid)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    rss0 = sum(rss_bytes(p) for p in pids)
    t0 = time.time()
    publisher = multiprocessing.get_context("fork").Process(
        target=_publisher, args=(base, run, streams, t0 + 0.2, TOKENS)
    )
    publisher.start()
    results = collect(procs, pipes)
    publisher.join()
    wall = time.time() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    out = summarize(results, readers, readers * TOKENS, (streams, per), wall, cpu)
    out["rss_kb_total"] = round(rss0 / 1024)
    return out


def wrk(url: str, seconds: int = 5, connections: int = 50) -> float:
    binary = shutil.which("wrk")
    if not binary:
        return float("nan")
    out = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{seconds}s", url], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return float("nan")


# --- the run ---------------------------------------------------------------------------------


BACKLOG_SYSCTLS = {"net.core.somaxconn": "65535", "net.ipv4.tcp_max_syn_backlog": "65535"}


def raise_backlogs() -> dict[str, str]:
    """Both servers listen with a backlog of 65,535, which the kernel caps at somaxconn:
    raised for the run when we may (as root), as a site expecting flash crowds would."""
    before = {}
    for key, value in BACKLOG_SYSCTLS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        try:
            before[key] = path.read_text().strip()
            path.write_text(value)
        except OSError:
            pass
    return before


def restore_backlogs(before: dict[str, str]) -> None:
    for key, value in before.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key.replace(".", "/")).write_text(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1, help="offloadd serve --workers")
    parser.add_argument("--quick", action="store_true", help="small points only (a smoke run)")
    parser.add_argument("--no-nchan", action="store_true")
    parser.add_argument("--points", help="streams x readers to run, e.g. 100x100,40x25")
    parser.add_argument("--flash", help="flash crowds, streams x readers in all, e.g. 40x1000")
    parser.add_argument(
        "--only", choices=["delivery", "creates"], help="delivery: no creates, stop, static"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    raise_fd_limit()
    points = POINTS[:2] if args.quick else POINTS
    flashes = [] if args.quick else FLASH_POINTS
    if args.points:
        points = parse_points(args.points)
    if args.flash is not None:
        flashes = parse_points(args.flash)
    backlogs = raise_backlogs()
    # On the repository's disk, like a deployment's ./data: this machine's /tmp makes a
    # file ten times slower (0.9 ms vs 0.09 ms of CPU each, measured), which no user has
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="data-", dir=out))
    mock_port, port = free_port(), free_port()
    mock = Proc(
        [sys.executable, "-m", "offloadd", "mock-upstream", "--port", str(mock_port)],
        b"mock upstream listening",
    )
    mock_url = f"http://127.0.0.1:{mock_port}"
    server = Proc(
        [
            sys.executable,
            "-m",
            "offloadd",
            "serve",
            "--data",
            str(data),
            "--port",
            str(port),
            "--no-auth",
            "--upstream-url",
            f"{mock_url}/v1",
            "--upstream-key",
            "bench",
            "--workers",
            str(args.workers),
            "--max-connections",
            "25000",  # nginx's worker_connections below is 20,000
            "--log-level",
            "WARNING",
        ],
        b"listening",
    )
    base = f"http://127.0.0.1:{port}"
    report: dict = {
        "machine": machine(),
        "workers": args.workers,
        "tokens": TOKENS,
        "delay_ms": DELAY_MS,
        "sysctls": {
            key: Path("/proc/sys", key.replace(".", "/")).read_text().strip()
            for key in BACKLOG_SYSCTLS
        },
    }
    try:
        if args.only == "creates":
            report["creates"] = create_rates(server, base)
            print("creates", report["creates"], flush=True)
            return
        report["floor"] = mock_floor(mock_url, 100)
        print("floor", report["floor"], flush=True)
        report["offloadd"] = []
        for streams, per in points:
            figures = offloadd_delivery(server, base, streams, per)
            print("offloadd", figures, flush=True)
            report["offloadd"].append(figures)
        report["offloadd_flash"] = []
        for streams, readers in flashes:
            figures = offloadd_flash(server, base, streams, readers)
            print("offloadd flash", figures, flush=True)
            report["offloadd_flash"].append(figures)
        idle_cpu0 = server.cpu()
        time.sleep(3)
        report["idle_cpu_s_per_s"] = round((server.cpu() - idle_cpu0) / 3, 4)
        if not args.only:
            report["creates"] = create_rates(server, base)
            print("creates", report["creates"], flush=True)
            report["stop"] = asyncio.run(stop_latency(base, mock_url, 20))
            print("stop", report["stop"], flush=True)
        if not args.no_nchan and Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists():
            nginx, nbase, _ = start_nginx(data)
            try:
                report["nchan"] = []
                for streams, per in points:
                    figures = nchan_delivery(nginx, nbase, streams, per)
                    print("nchan", figures, flush=True)
                    report["nchan"].append(figures)
                report["nchan_flash"] = []
                for streams, readers in flashes:
                    figures = nchan_flash(nginx, nbase, streams, readers)
                    print("nchan flash", figures, flush=True)
                    report["nchan_flash"].append(figures)
                sample = next(data.glob("pub/*/*/*/*/*/*/*.txt"))
                rel = sample.relative_to(data)
                report["static"] = (
                    None
                    if args.only
                    else {
                        "file_bytes": sample.stat().st_size,
                        "offloadd_rps": wrk(f"{base}/1/r/{rel}"),
                        "nginx_rps": wrk(f"{nbase}/static/{rel}"),
                    }
                )
                print("static", report["static"], flush=True)
            finally:
                nginx.terminate()
                nginx.wait()
    finally:
        server.stop()
        mock.stop()
        shutil.rmtree(data, ignore_errors=True)
        restore_backlogs(backlogs)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))


def parse_points(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (p.split("x") for p in text.split(",") if p)]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def markdown(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}; offloadd workers: {report['workers']}; "
        f"{report['tokens']} tokens at {report['delay_ms']} ms per stream.",
        "",
    ]
    floor = report["floor"]
    lines += [
        f"Floor (100 readers straight on the mock): p50 {floor['p50_ms']} ms, "
        f"p99 {floor['p99_ms']} ms, max {floor['max_ms']} ms.",
        "",
    ]
    lines += [
        "| system | streams × readers | all events, in order | p50 ms | p99 ms | max ms "
        "| span s | server CPU s | µs CPU / event | load-gen CPU s | RSS / reader KiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("offloadd", "nchan"):
        for f in report.get(name, []):
            lines.append(
                f"| {name} | {f['streams']} × {f['per_stream']} | "
                f"{'yes' if f['complete'] else 'NO ' + str(f['errors'][:1])} | {f['p50_ms']} | "
                f"{f['p99_ms']} | {f['max_ms']} | {f['span_s']} | {f['server_cpu_s']} | "
                f"{f['cpu_us_per_event']} | {f['loadgen_cpu_s']} | "
                f"{f.get('rss_per_reader_kb', '–')} |"
            )
    if report.get("nchan"):
        lines += [
            "",
            "| streams × readers | CPU/event offloadd ÷ nchan | p99 offloadd − nchan ms "
            "| span offloadd ÷ nchan |",
            "|---|---|---|---|",
        ]
        for o, n in zip(report["offloadd"], report["nchan"], strict=True):
            lines.append(
                f"| {o['streams']} × {o['per_stream']} | "
                f"{o['cpu_us_per_event'] / max(n['cpu_us_per_event'], 0.01):.2f} | "
                f"{o['p99_ms'] - n['p99_ms']:.1f} | {o['span_s'] / max(n['span_s'], 0.001):.2f} |"
            )
    lines += [
        "",
        f"Idle server CPU: {report['idle_cpu_s_per_s']} s per s.",
        "",
        "| create rate /s | achieved /s | errors | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for c in report.get("creates", []):
        lines.append(
            f"| {c['rate']} | {c['achieved']} | {c['errors']} | {c['p50_ms']} | {c['p99_ms']} |"
        )
    s = report.get("stop") or {"n": 0, "p50_ms": "–", "p99_ms": "–", "max_ms": "–"}
    lines += [
        "",
        f"Stop → upstream closed ({s['n']} stops): p50 {s['p50_ms']} ms, "
        f"p99 {s['p99_ms']} ms, max {s['max_ms']} ms.",
    ]
    if st := report.get("static"):
        lines += [
            f"Finished transcript ({st['file_bytes']} B), wrk -t1 -c50: offloadd "
            f"{st['offloadd_rps']:.0f} req/s, nginx static {st['nginx_rps']:.0f} req/s "
            f"(ratio {st['offloadd_rps'] / st['nginx_rps']:.2f})."
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
