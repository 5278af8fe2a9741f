"""`make_app(config, …)`: the daemon's application — its collaborators, its routes, its
background tasks (supervised)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine

from aiohttp import web

from offloadd.config import Config
from offloadd.domain.idempotency import Idempotency
from offloadd.domain.webhooks import Webhooks, load_or_create_secret
from offloadd.http.appkeys import (
    CONFIG,
    CREATOR,
    HUB,
    KEYS,
    METRICS,
    ON_FATAL,
    RUNNER,
    STORE,
    STREAMS,
    UPSTREAM_URL,
)
from offloadd.http.middleware import cors_middleware, error_middleware
from offloadd.http.routes import add_routes
from offloadd.keys.base import KeyStore, load_plans
from offloadd.keys.sqlite import SQLiteKeys
from offloadd.metrics import Metrics
from offloadd.mock.app import make_mock_app
from offloadd.requests.create import Creator
from offloadd.requests.endings import Endings
from offloadd.requests.housekeeping import Housekeeping, retention_loop, streams_gc_loop
from offloadd.requests.readers import Hub
from offloadd.requests.runner import Runner
from offloadd.requests.sessions import Sessions
from offloadd.requests.streams import Streams
from offloadd.requests.watch import Watch
from offloadd.storage.registry import Registry
from offloadd.storage.store import Store
from offloadd.storage.streams import StreamFiles
from offloadd.upstream.call import Upstream
from offloadd.upstream.http1 import Client

log = logging.getLogger("offloadd.web")


def make_app(
    config: Config,
    keys: KeyStore | None = None,
    on_fatal: Callable[[str], None] = lambda task_name: None,
) -> web.Application:
    """The daemon: create endpoints, reading URLs, and the tasks that run requests.
    `keys` is the key store (SQLite under the data directory unless given); `on_fatal` is
    called when a background task dies."""
    app = web.Application(
        middlewares=[cors_middleware, error_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config
    app[STORE] = Store(config.data)
    app[METRICS] = Metrics()
    app[STREAMS] = Streams(StreamFiles(config.data), Watch(config.poll_interval))
    app[METRICS].stream_waiters = lambda: app[STREAMS].watcher.waiters
    app[ON_FATAL] = on_fatal
    if config.auth:
        if keys is not None:
            app[KEYS] = keys
        else:
            app.cleanup_ctx.append(_keys_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_runner_ctx)
    app.on_shutdown.append(_shutdown)
    add_routes(app)
    return app


async def _keys_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    plans = load_plans(config.plans_file)
    if config.keys_url:
        from offloadd.keys.postgres import PostgresKeys

        pg = PostgresKeys(config.keys_url, plans)
        app[KEYS] = pg
        yield
        await pg.close()
        return
    keys = app[KEYS] = SQLiteKeys(config.data, plans)
    yield
    keys.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstream's client session, and the in-process mock when `--upstream-url mock`."""
    config = app[CONFIG]
    mock_runner = None
    url, anthropic_url = config.upstream_url, config.anthropic_url
    if config.uses_mock or config.anthropic_mock:  # one mock speaks every API
        mock_runner = web.AppRunner(make_mock_app(), handler_cancellation=True, access_log=None)
        await mock_runner.setup()
        site = web.TCPSite(mock_runner, "127.0.0.1", 0)
        await site.start()
        port = mock_runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/v1" if config.uses_mock else url
        anthropic_url = f"http://127.0.0.1:{port}" if config.anthropic_mock else anthropic_url
    app[UPSTREAM_URL] = url
    client = Client()

    def secret() -> bytes:  # made on first use, so a server without webhooks writes none
        return (config.webhook_secret or "").encode() or load_or_create_secret(config.data)

    async with Webhooks.client_session(config.allow_private_webhooks) as hook_session:
        webhooks = Webhooks(
            hook_session,
            secret,
            config.allow_private_webhooks,
            config.webhook_max_seconds,
            config.webhook_backoff,
        )
        runner = app[RUNNER] = Runner(
            app[STORE],
            Upstream(
                client,
                url,
                config.upstream_retries,
                config.upstream_retry_max_wait,
                anthropic_url,
            ),
            config,
            endings=Endings(app[STORE], config.retry_ms),
            webhooks=webhooks,
            registry=Registry(config.data, config.owner_stale_seconds),
            metrics=app[METRICS],
            keys=app.get(KEYS),
        )
        app[METRICS].running = lambda: runner.running
        app[CREATOR] = Creator(
            config,
            app[STORE],
            runner,
            webhooks,
            app.get(KEYS),
            Idempotency(config.data, secret),
        )
        yield
    client.close()
    if mock_runner:
        await mock_runner.cleanup()


async def _runner_ctx(app: web.Application) -> AsyncIterator[None]:
    """The poll loop that follows files for readers, wired to the runner's writes."""
    config = app[CONFIG]
    hub = app[HUB] = Hub(
        config.poll_interval,
        config.keepalive_seconds,
        config.retry_ms,
        app[METRICS],
        config.reader_send_buffer,
    )
    runner = app[RUNNER]
    runner.on_append = hub.poke
    app[CREATOR].sessions = Sessions(app[STREAMS], hub, runner)
    housekeeping = Housekeeping(
        runner.registry,
        app[STORE],
        runner.endings,
        config,
        running=runner.running_ids,
        stop=runner.cancel,
        poke=hub.poke,
    )
    jobs = {
        "offloadd-hub": hub.run(),
        "offloadd-housekeeping": housekeeping.run(),
        "offloadd-loop-watch": app[METRICS].watch_loop(),
        "offloadd-streams-watch": app[STREAMS].watcher.run(),
    }
    if config.retention_seconds:
        jobs["offloadd-retention"] = retention_loop(config.data, config.retention_seconds)
    jobs["offloadd-streams-gc"] = streams_gc_loop(app[STREAMS].files, config.retention_seconds)
    tasks = [_supervised(app, job, name) for name, job in jobs.items()]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    app[RUNNER].registry.leave()


def _supervised(app: web.Application, job: Coroutine, name: str) -> asyncio.Task:
    """A background task whose death is not silent: it is logged with its traceback and
    the app's `on_fatal` is called (the daemon exits non-zero; systemd restarts it),
    rather than serving half-alive with readers that hang."""
    task = asyncio.create_task(job, name=name)

    def check(task: asyncio.Task) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.critical("background task %s died", name, exc_info=error)
            app[ON_FATAL](name)

    task.add_done_callback(check)
    return task


async def _shutdown(app: web.Application) -> None:
    """Before open connections are closed: running requests finish or end, so every
    reader receives its stream's end instead of a cut connection."""
    await app[RUNNER].close()
    if (sessions := app[CREATOR].sessions) is not None:
        await sessions.close()  # the answers' ends into their session streams
    await app[STREAMS].close()
