"""A crowd through the cache (issue 24, item 4): Durable Streams long-poll readers of live
answers, through nginx with the shipped config (deploy/nginx/offloadd.conf, its cache in
front of offloadd), each reader arriving at once onto answers already live; and one
reader per answer, the baseline of offloadd's CPU. offloadd's own access log (its
`offset`) tells how many requests per offset reached it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from measure import collect, cpu_of, raise_fd_limit, run_generators, summarize

from realworld import Daemon
from scenarios.fanout import FLASH_AFTER_S, FLASH_TOKENS, create_streams
from scenarios.nchan import Nginx

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "offloadd.conf"


def render(backend: int, data: Path):
    """The shipped config as tests/test_nginx.py renders it (ports, data and cache folders),
    with the Nchan peer's limits: one worker, 20,000 connections, a backlog of 65,535,
    no access log."""

    def conf(tmp: Path, port: int) -> str:
        server = CONF.read_text()
        server = server.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{backend};")
        server = server.replace("listen 80;", f"listen 127.0.0.1:{port} backlog=65535;")
        server = server.replace("/var/lib/offloadd", str(data))
        # on the repository's disk, next to the data, like /var/cache (this machine's /tmp
        # costs a file three times the CPU)
        server = server.replace("/var/cache/nginx/offloadd", str(data.parent / "nginx-cache"))
        temp = "\n".join(
            f"    {kind}_temp_path {tmp}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"worker_processes 1;\nworker_rlimit_nofile 20000;\npid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/error.log;\nevents {{ worker_connections 20000; }}\n"
            f"http {{\n    access_log off;\n{temp}\n{server}\n}}\n"
        )

    return conf


class Stack:
    """offloadd (its access log on, at INFO) and nginx with the shipped cache in front."""

    def __init__(self, mock_url: str, data: Path):
        serve = ("serve", "--data", str(data), "--no-auth", "--workers", "1")
        upstream = ("--upstream-url", f"{mock_url}/v1", "--upstream-key", "bench")
        quiet = ("--max-connections", "25000", "--log-level", "INFO")
        self.server = Daemon(*serve, *upstream, *quiet, preexec_fn=raise_fd_limit).start()
        try:
            self.nginx = Nginx(data, render(self.server.port, data))
        except BaseException:
            self.server.stop()
            raise

    def stop(self) -> None:
        self.nginx.stop()
        self.server.stop(30)


def reached(output: bytes, paths: set[str]) -> Counter:
    """GETs of these paths that offloadd answered, per (path, offset), from its access log."""
    seen: Counter = Counter()
    for line in output.splitlines():
        _, marker, entry = line.partition(b" offloadd.access ")
        if marker:
            record = orjson.loads(entry)
            if record["method"] == "GET" and record["path"] in paths and "offset" in record:
                seen[record["path"], record["offset"]] += 1
    return seen


def point(stack: Stack, streams: int, readers: int) -> dict:
    """`readers` long-poll readers arriving at once onto `streams` answers live for 1 s."""
    server, nginx = stack.server, stack.nginx
    model = f"mock?tokens={FLASH_TOKENS}&delay_ms=20&stamp=1"
    urls = asyncio.run(create_streams(server.url, streams, model))
    paths = [urlsplit(url).path for url in urls]
    time.sleep(FLASH_AFTER_S)  # the crowd arrives this far into the answers
    targets = [("GET", nginx.url + paths[i % streams], None) for i in range(readers)]
    mark = len(server.output)
    cpu0, nginx0, t0 = cpu_of(server.pids()), cpu_of(nginx.pids()), time.time()
    procs, pipes = run_generators(targets, "longpoll", 0, 2 if readers > 100 else 1, flash=True)
    results = collect(procs, pipes)
    wall, cpu = time.time() - t0, cpu_of(server.pids()) - cpu0
    nginx_cpu = cpu_of(nginx.pids()) - nginx0
    time.sleep(0.3)  # the access log's last lines (written once each answer is sent)
    seen = reached(server.output[mark:], set(paths))
    expected = readers * (FLASH_TOKENS + 3)
    out = summarize(results, readers, expected, (streams, readers), wall, cpu)
    made = sum(r.requests for r in results)
    out.update(
        cpu_s_per_answer=round(cpu / streams, 3),
        nginx_cpu_s=round(nginx_cpu, 2),
        requests_made=made,
        requests_reached_offloadd=sum(seen.values()),
        offsets=len(seen),
        per_offset_mean=round(sum(seen.values()) / max(1, len(seen)), 2),
        per_offset_max=max(seen.values(), default=0),
    )
    return out


def run(mock_url: str, data: Path, points: list[tuple[int, int]]) -> list[dict]:
    """Each crowd point after its baseline (one reader per answer), on one stack."""
    stack = Stack(mock_url, data)
    try:
        out = []
        for streams, readers in points:
            for n in dict.fromkeys((streams, readers)):
                figures = point(stack, streams, n)
                print("crowd", figures, flush=True)
                out.append(figures)
        return out
    finally:
        stack.stop()
