"""The peer in the same run: nginx with the Nchan module, one worker, fed the same event
sequences by a publisher on the same 20 ms tick; and its static module for a finished file."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from measure import (
    DELAY_MS,
    TOKENS,
    collect,
    cpu_of,
    raise_fd_limit,
    rss_of,
    run_generators,
    summarize,
    wait_connected,
)

from realworld import free_port, process_tree
from scenarios.fanout import FLASH_AFTER_S, FLASH_TOKENS

MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CONF = """
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


class Nginx:
    """nginx + Nchan on a free loopback port, serving `data` under /static/ too; or, given
    `render(tmp, port)`, nginx with the configuration that returns."""

    def __init__(self, data: Path, render=None):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        conf = self.tmp / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""
        text = render(self.tmp, port) if render else None
        conf.write_text(
            user + (text or CONF.format(module=MODULE, tmp=self.tmp, port=port, data=data))
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"],
            preexec_fn=raise_fd_limit,
        )
        for _ in range(100):  # until it accepts
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Drain(asyncio.Protocol):
    """Counts nginx's answers to the pipelined publishes (closing before the last one
    would drop the publishes nginx has not read yet)."""

    def __init__(self) -> None:
        self.answers, self.tail = 0, b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        self.answers += data.count(b"HTTP/1.1 ")
        self.tail = data[-8:]


def _publish_request(host: str, channel: str, i: int) -> bytes:
    body = f'{{"i":{i},"choices":[{{"delta":{{"content":" {time.time_ns()}"}}}}]}}'
    return (
        f"POST /pub/{channel} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def publish(base: str, run: str, channels: int, start_at: float, tokens: int) -> None:
    """Every channel's messages on one kept-alive, pipelined connection each, written on
    one 20 ms tick: a publisher that keeps nginx's pace (an HTTP client making 5,000
    requests a second in Python does not), stamped when written."""
    loop = asyncio.get_running_loop()
    host, port = base.split("://")[1].split(":")
    connections = [await loop.create_connection(_Drain, host, int(port)) for _ in range(channels)]
    for i in range(tokens):
        delay = start_at + i * DELAY_MS / 1000 - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for c, (transport, _) in enumerate(connections):
            transport.write(_publish_request(host, f"{run}c{c}", i))
    while any(drain.answers < tokens for _, drain in connections):
        await asyncio.sleep(0.05)
    for transport, _ in connections:
        transport.close()


def _publisher(base: str, run: str, channels: int, start_at: float, tokens: int) -> None:
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    run_loop(publish(base, run, channels, start_at, tokens))


def _start_publisher(*args) -> multiprocessing.Process:
    publisher = multiprocessing.get_context("fork").Process(target=_publisher, args=args)
    publisher.start()
    return publisher


def delivery(nginx: Nginx, streams: int, per: int) -> dict:
    """The same fan-out as offloadd's: every subscriber connected before the first message."""
    readers = streams * per
    run = f"r{int(time.time() * 1000)}"  # fresh channels: none holds an earlier run's messages
    targets = [("GET", f"{nginx.url}/sub/{run}c{c}", None) for c in range(streams)]
    targets = [t for t in targets for _ in range(per)]
    procs, pipes = run_generators(targets, "seq", TOKENS, 2 if readers > 1000 else 1)
    wait_connected(pipes)
    pids = nginx.pids()
    cpu0, rss0, t0 = cpu_of(pids), rss_of(pids), time.time()
    publisher = _start_publisher(nginx.url, run, streams, t0 + 0.2, TOKENS)
    results = collect(procs, pipes)
    publisher.join()
    wall, cpu = time.time() - t0, cpu_of(pids) - cpu0
    out = summarize(results, readers, readers * TOKENS, (streams, per), wall, cpu)
    out["rss_kb_total"] = round(rss0 / 1024)
    return out


def flash(nginx: Nginx, streams: int, readers: int) -> dict:
    """The same flash crowd as offloadd's: channels live for a second, then every reader."""
    run = f"f{int(time.time() * 1000)}"
    pids = nginx.pids()
    publisher = _start_publisher(nginx.url, run, streams, time.time() + 0.05, FLASH_TOKENS)
    time.sleep(FLASH_AFTER_S)  # the crowd arrives this far into the streams
    targets = [("GET", f"{nginx.url}/sub/{run}c{i % streams}", None) for i in range(readers)]
    cpu0, t0 = cpu_of(pids), time.time()
    procs, pipes = run_generators(targets, "seq", FLASH_TOKENS, 2, flash=True)
    results = collect(procs, pipes)
    publisher.join()
    wall, cpu = time.time() - t0, cpu_of(pids) - cpu0
    return summarize(results, readers, readers * FLASH_TOKENS, (streams, readers), wall, cpu)


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


def static(nginx: Nginx, base: str, data: Path) -> dict:
    """A finished transcript served by offloadd and by nginx's static module."""
    sample = next(data.glob("pub/*/*/*/*/*/*/*.txt"))
    rel = sample.relative_to(data)
    return {
        "file_bytes": sample.stat().st_size,
        "offloadd_rps": wrk(f"{base}/1/r/{rel}"),
        "nginx_rps": wrk(f"{nginx.url}/static/{rel}"),
    }
