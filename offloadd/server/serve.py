"""Running the daemon: the listening socket (TCP, Unix, or inherited from systemd), one
process or several workers sharing it, and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import socket
import stat
from collections.abc import Callable

from aiohttp import web

from offloadd.config import Config
from offloadd.server.guard import GuardedRunner, Limits
from offloadd.server.logs import AccessLogger

log = logging.getLogger("offloadd.server")
SD_LISTEN_FDS_START = 3


LISTEN_BACKLOG = 65535


def listen_socket(config: Config) -> socket.socket:
    """The socket to serve on: `--fd`, systemd socket activation, `--unix`, or host:port."""
    if config.fd is not None:
        return socket.socket(fileno=config.fd)
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        return socket.socket(fileno=SD_LISTEN_FDS_START)
    if config.unix:
        with_path = config.unix
        if os.path.exists(with_path) and stat.S_ISSOCK(os.stat(with_path).st_mode):
            os.unlink(with_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(with_path)
        os.chmod(with_path, 0o660)
    else:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
    # Bursts of new readers queue here, not in SYN retries: as long a queue as the kernel
    # allows (net.core.somaxconn caps it; docs/deployment.md, *A flash crowd*).
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def serve_one(config: Config, sock: socket.socket, announce: Callable[[], None] | None) -> None:
    """One process serving until SIGINT or SIGTERM (or until a background task dies)."""
    use_uvloop()
    # Thousands of open streams make a large, long-lived heap; the default thresholds
    # would scan it all again and again while connections come and go.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    fatal: list[str] = []
    asyncio.run(_serve(config, sock, announce, fatal))
    if fatal:
        raise SystemExit(f"offloadd: background task {fatal[0]} died; see the log")


async def _serve(
    config: Config, sock: socket.socket, announce: Callable[[], None] | None, fatal: list[str]
) -> None:
    from offloadd.http.app import make_app

    stop = asyncio.Event()

    def on_fatal(task_name: str) -> None:  # shut down as on SIGTERM, then exit non-zero
        fatal.append(task_name)
        stop.set()

    runner = GuardedRunner(
        make_app(config, on_fatal=on_fatal),
        Limits(config.header_timeout, config.max_connections),
        access_log_class=AccessLogger,
        access_log=logging.getLogger("offloadd.access"),
        handler_cancellation=True,
        # After an answer to a body that never came, read what trickles in for 2 s at
        # most (aiohttp's default is 10 s) so the client gets the answer, not a reset.
        lingering_time=2.0,
        shutdown_timeout=config.grace_seconds + 5,
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=LISTEN_BACKLOG).start()  # it listens again
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if announce:
            announce()
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(config: Config, announce: Callable[[], None]) -> None:
    """Serve with `config.workers` processes on one socket; the parent only supervises."""
    sock = listen_socket(config)
    if config.workers <= 1:
        serve_one(config, sock, announce)
        return
    context = multiprocessing.get_context("fork")
    workers = [_start(context, config, sock) for _ in range(config.workers)]
    announce()
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for i, worker in enumerate(workers):
            worker.join(timeout=0.5 / len(workers))
            if not stopping and not worker.is_alive():
                log.error("worker %s exited with %s; starting another", worker.pid, worker.exitcode)
                workers[i] = _start(context, config, sock)
    for worker in workers:
        worker.join()


def _start(context, config: Config, sock: socket.socket):
    worker = context.Process(target=serve_one, args=(config, sock, None), daemon=False)
    worker.start()
    return worker


def use_uvloop() -> None:
    """uvloop, when installed, roughly halves the event loop's share of each event."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
