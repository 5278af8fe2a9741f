"""Routes, the error middleware and CORS; `make_app(config)` builds the daemon's application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from offloadd import __version__
from offloadd.access import (
    TOKEN_QUERY,
    allows,
    any_allows,
    authorization,
    new_token,
    private_fields,
)
from offloadd.cluster import Housekeeping
from offloadd.config import Config
from offloadd.continuation import continued_messages, earlier_location
from offloadd.endings import Endings
from offloadd.errors import (
    ApiError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from offloadd.keys import KeyStore, SQLiteKeys, load_plans
from offloadd.layout import READ_PREFIXES, ROUTE, Location
from offloadd.metrics import Metrics
from offloadd.mock import make_mock_app
from offloadd.openapi import document
from offloadd.registry import Registry
from offloadd.retention import collect
from offloadd.runner import Runner
from offloadd.status import TERMINAL, create_answer, new_document, public_view
from offloadd.store import StorageError, Store
from offloadd.stream import Hub, respond
from offloadd.transcript import finished
from offloadd.upstream import Call, Upstream
from offloadd.validate import parse_body
from offloadd.webhooks import Webhooks, load_or_create_secret, shown_url

log = logging.getLogger("offloadd.web")

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", Hub)
RUNNER = web.AppKey("runner", Runner)
UPSTREAM_URL = web.AppKey("upstream_url", str)
KEYS = web.AppKey("keys", KeyStore)
METRICS = web.AppKey("metrics", Metrics)
ON_FATAL = web.AppKey("on_fatal", Callable[[str], None])
STATIC = "offloadd.static"  # a response that nginx completes from a file

STATIC_DIR = Path(__file__).parent / "static"
MOCK_KEY = "offloadd-mock-key"
# host[:port] as a URL may hold it: a name, an IPv4 address or a bracketed IPv6 one
HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)
HTTP_CODES = {
    404: NotFound("no such endpoint or conversation"),
    405: MethodNotAllowed("this method is not allowed here"),
}


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
    app[ON_FATAL] = on_fatal
    if config.auth:
        if keys is not None:
            app[KEYS] = keys
        else:
            app.cleanup_ctx.append(_keys_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_runner_ctx)
    app.on_shutdown.append(_shutdown)
    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.router.add_get("/v1/info", info)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/stream-chatgpt", create)
    app.router.add_post("/v1/async-chatgpt", create)
    app.router.add_get(f"{ROUTE}.json", status)
    app.router.add_get(f"{ROUTE}.txt", events)
    app.router.add_route("GET", f"{ROUTE}/stop", stop)
    app.router.add_route("POST", f"{ROUTE}/stop", stop)
    for suffix in (".json", ".txt", "/stop"):
        app.router.add_route("OPTIONS", f"{ROUTE}{suffix}", preflight)
    for path in ("/v1/stream-chatgpt", "/v1/async-chatgpt"):
        app.router.add_route("OPTIONS", path, preflight)
    return app


async def _keys_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    keys = app[KEYS] = SQLiteKeys(config.data, load_plans(config.plans_file))
    yield
    keys.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstream's client session, and the in-process mock when `--upstream-url mock`."""
    config = app[CONFIG]
    mock_runner = None
    url = config.upstream_url
    if config.uses_mock:
        mock_runner = web.AppRunner(make_mock_app(), handler_cancellation=True, access_log=None)
        await mock_runner.setup()
        site = web.TCPSite(mock_runner, "127.0.0.1", 0)
        await site.start()
        port = mock_runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/v1"
    app[UPSTREAM_URL] = url
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)

    def secret() -> bytes:  # made on first use, so a server without webhooks writes none
        return (config.webhook_secret or "").encode() or load_or_create_secret(config.data)

    async with (
        aiohttp.ClientSession(connector=connector, auto_decompress=False) as session,
        Webhooks.client_session(config.allow_private_webhooks) as hook_session,
    ):
        webhooks = Webhooks(
            hook_session,
            secret,
            config.allow_private_webhooks,
            config.webhook_max_seconds,
            config.webhook_backoff,
        )
        runner = app[RUNNER] = Runner(
            app[STORE],
            Upstream(session, url, config.upstream_retries, config.upstream_retry_max_wait),
            config,
            endings=Endings(app[STORE], config.retry_ms),
            webhooks=webhooks,
            registry=Registry(config.data, config.owner_stale_seconds),
            metrics=app[METRICS],
        )
        app[METRICS].running = lambda: runner.running
        yield
    if mock_runner:
        await mock_runner.cleanup()


async def _runner_ctx(app: web.Application) -> AsyncIterator[None]:
    """The poll loop that follows files for readers, wired to the runner's writes."""
    config = app[CONFIG]
    hub = app[HUB] = Hub(
        config.poll_interval, config.keepalive_seconds, config.retry_ms, app[METRICS]
    )
    runner = app[RUNNER]
    runner.on_append = hub.poke
    housekeeping = Housekeeping(
        runner.registry,
        app[STORE],
        runner.endings,
        config,
        running=runner.running_ids,
        stop=runner.cancel,
        poke=hub.poke,
    )
    jobs = {"offloadd-hub": hub.run(), "offloadd-housekeeping": housekeeping.run()}
    if config.retention_seconds:
        jobs["offloadd-retention"] = _retention(config)
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


async def _retention(config: Config) -> None:
    """Apply `--retention` at start and then every hour (or sooner for short retentions)."""
    while True:
        removed = await asyncio.to_thread(collect, config.data, config.retention_seconds)
        if removed:
            log.info("retention: removed %d conversation(s)", len(removed))
        await asyncio.sleep(min(3600.0, max(1.0, config.retention_seconds / 10)))


async def _shutdown(app: web.Application) -> None:
    """Before open connections are closed: running requests finish or end, so every
    reader receives its stream's end instead of a cut connection."""
    await app[RUNNER].close()


# --- errors and CORS -------------------------------------------------------------


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    body = {"status": "error", "error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every failure becomes the one JSON error shape; nothing else reaches a client."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except StorageError as e:
        log.error("storage: %s", e)
        return error_response(503, "storage_unavailable", f"the server cannot store data: {e}")
    except web.HTTPRequestEntityTooLarge:
        e = PayloadTooLarge(f"the body is larger than {request.app[CONFIG].max_body_bytes} bytes")
        return error_response(e.status, e.code, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        known = HTTP_CODES.get(e.status)
        code = known.code if known else "http_error"
        message = known.message if known else e.reason
        return error_response(
            e.status,
            code,
            message,
            {"Allow": e.headers.get("Allow", "")} if e.status == 405 else None,
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
        return error_response(500, "internal_error", "the server failed; see its log")


def _allowed_origin(request: web.Request, origins: tuple[str, ...]) -> str | None:
    if not origins:
        return None
    if "*" in origins:
        return "*"
    origin = request.headers.get("Origin")
    return origin if origin in origins else None


def cors_headers(request: web.Request) -> dict:
    """CORS for reading URLs (default any origin); for create only when configured."""
    config = request.app[CONFIG]
    reading = request.path.startswith(READ_PREFIXES)
    origin = _allowed_origin(
        request, config.cors_origins if reading else config.create_cors_origins
    )
    if origin is None:
        return {}
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "X-RateLimit-Limit, X-RateLimit-Remaining, "
        "X-RateLimit-Reset, Retry-After",
    }
    if origin != "*":
        headers["Vary"] = "Origin"
    return headers


@web.middleware
async def cors_middleware(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared and not response.get(STATIC):
        response.headers.update(cors_headers(request))
    return response


async def preflight(request: web.Request) -> web.Response:
    headers = cors_headers(request)
    if headers:
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Last-Event-ID, Content-Type"
                + (
                    ", X-API-Key, X-RapidAPI-Key, X-OpenAI-API-Key, X-OpenAI-Organization"
                    if not request.path.startswith(READ_PREFIXES)
                    else ""
                ),
                "Access-Control-Max-Age": "86400",
            }
        )
    return web.Response(status=204, headers=headers)


# --- create ---------------------------------------------------------------------------


def public_base(request: web.Request) -> str:
    """The base of the URLs handed out: `--public-url`, else what the client reached."""
    config = request.app[CONFIG]
    if config.public_url:
        return config.public_url.rstrip("/")
    proto, host = request.scheme, request.host
    allowed = config.forwarded_allow_ips
    if "*" in allowed or request.remote in allowed:
        proto = request.headers.get("X-Forwarded-Proto", proto).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    if proto not in ("http", "https"):
        proto = request.scheme
    if not HOST.fullmatch(host):
        raise BadRequest("the request's host is not a valid host name", code="invalid_host")
    return f"{proto}://{host}"


def upstream_key(request: web.Request) -> str:
    config = request.app[CONFIG]
    key = request.headers.get("X-OpenAI-API-Key") or config.upstream_key
    if not key and config.uses_mock:
        key = MOCK_KEY
    if not key:
        raise Unauthorized(
            "send your OpenAI key in the `X-OpenAI-API-Key` header "
            "(this server has no upstream key of its own)",
            code="missing_openai_key",
        )
    return key


def api_key(request: web.Request) -> str:
    """The caller's offloadd key, from any header the original's clients may use."""
    headers = request.headers
    bearer = headers.get("Authorization", "")
    key = headers.get("X-RapidAPI-Key") or headers.get("X-API-Key")
    if not key and bearer[:7].lower() == "bearer ":
        key = bearer[7:].strip()
    if not key:
        raise Unauthorized(
            "send your offloadd API key in `X-API-Key` (or `X-RapidAPI-Key`, or "
            "`Authorization: Bearer`); make one with `offloadd keys create`",
            code="missing_api_key",
        )
    return key


def _check_json(request: web.Request) -> None:
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as JSON with `Content-Type: application/json`")
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")


async def create(request: web.Request) -> web.Response:
    """Store the request, start its upstream call in a task, answer with its URLs at once."""
    counted = request.app[METRICS].created
    try:
        response = await _create(request)
    except ApiError as e:
        counted[request.path, e.code] += 1
        raise
    except StorageError:
        counted[request.path, "storage_unavailable"] += 1
        raise
    counted[request.path, "accepted"] += 1
    return response


async def _create(request: web.Request) -> web.Response:
    config, runner = request.app[CONFIG], request.app[RUNNER]
    if runner.closing:
        raise Unavailable("the server is shutting down", code="shutting_down")
    caller = api_key(request) if config.auth else None
    if caller:
        await request.app[KEYS].check(caller)
    _check_json(request)
    chat = parse_body(await _body(request, config), config)
    options = chat.options
    key = upstream_key(request)
    base = public_base(request)
    earlier = _earlier(request, base, options) if options.from_status_url else None
    webhook = options.webhook_url and runner.webhooks.check_url(options.webhook_url)
    charge = await request.app[KEYS].charge(caller) if caller else None
    try:
        return await _start(request, chat, key, base, earlier, webhook, charge)
    except BaseException:  # nothing that was not started is counted against the quota
        if charge:
            await request.app[KEYS].refund(charge)
        raise


async def _start(request, chat, key, base, earlier, webhook, charge) -> web.Response:
    runner, options, parameters = request.app[RUNNER], chat.options, chat.parameters

    access = options.access or (earlier or {}).get("authorization", {}).get("access", "public")
    token = new_token() if access == "private" else None
    now = time.time()
    loc = Location.new("priv" if token else "pub", datetime.fromtimestamp(now, UTC))
    if earlier:
        parameters = {**parameters, "messages": continued_messages(earlier, parameters["messages"])}
    kind = 1 if request.path == "/v1/stream-chatgpt" else 2
    doc = new_document(
        kind=kind,
        loc=loc,
        base_url=base,
        created_at=now,
        conversation_id=options.conversation_id
        or (earlier or {}).get("conversation_id")
        or loc.uuid,
        authorization={"access": access},
        options={"timeout": options.timeout, "connect_timeout": options.connect_timeout},
        parameters=parameters,
        from_status_url=earlier and earlier["endpoints"]["status_url"],
    )
    if token:
        doc.update(private_fields(token))
    if webhook:
        doc["webhook"] = {"url": shown_url(webhook), "status": "pending", "attempts": 0}
    store = request.app[STORE]
    await asyncio.to_thread(store.create, loc, doc)  # both files, or neither
    organization = request.headers.get("X-OpenAI-Organization")
    call = Call(parameters, key, organization, options.connect_timeout)
    try:
        runner.start(loc, doc, call, chat.usage_added, options.timeout, webhook or None)
    except BaseException:
        store.remove(loc)
        raise
    answer = create_answer(doc, kind, authorization(token) if token else {"access": "public"})
    if token:
        answer["endpoints"]["bearer_token"] = token
    headers = charge.limits.headers() if charge and charge.limits else None
    return web.json_response(answer, headers=headers)


async def _body(request: web.Request, config: Config) -> bytes:
    """The body, if it arrives within `--body-timeout` (a slow client holds no slot forever)."""
    try:
        async with asyncio.timeout(config.body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {config.body_timeout:g} s", code="body_timeout"
        ) from None


def _earlier(request: web.Request, base: str, options) -> dict:
    """The finished request a continuation starts from, or a clear error."""
    loc = earlier_location(options.from_status_url, base)
    doc = request.app[RUNNER].document(loc)
    if doc is None or not allows(doc, options.from_bearer_token):
        raise NotFound(
            "`from_status_url` names no conversation here (or a private one without the right "
            "`from_bearer_token`)",
            code="from_status_not_found",
        )
    if doc["status"] not in TERMINAL:
        raise BadRequest(
            "the conversation at `from_status_url` is still running; continue it once it ends",
            code="from_status_not_finished",
        )
    return doc


# --- reading URLs ---------------------------------------------------------------------


def locate(request: web.Request) -> Location:
    info = request.match_info
    loc = Location.parse(info["scope"], info["stamp"], info["uuid"])
    if loc is None:
        raise NotFound("no such conversation")
    return loc


def tokens(request: web.Request, query_too: bool = False) -> list[str]:
    """Every token the caller sent. An SDK sends `Authorization: Bearer <its api key>` on
    every request, so a wrong header must not hide a right `?token=`."""
    found = []
    value = request.headers.get("Authorization", "")
    if value[:7].lower() == "bearer ":
        found.append(value[7:].strip())
    if query_too and (query := request.query.get(TOKEN_QUERY)):
        found.append(query)
    return found


def conversation(request: web.Request, query_token: bool = False) -> tuple[Location, dict]:
    """The conversation a reading URL names, if the caller may see it; 404 otherwise,
    so a private conversation's existence is not revealed."""
    loc = locate(request)
    doc = request.app[RUNNER].document(loc)  # one read: a missing file is a missing document
    if doc is None or not any_allows(doc, tokens(request, query_token)):
        raise NotFound("no such conversation")
    return loc, doc


def accel(request: web.Request, loc: Location, suffix: str) -> web.Response | None:
    """Hand a finished public file to nginx, which sends it as a static file."""
    prefix = request.app[CONFIG].accel_redirect
    if not prefix or loc.scope != "pub":
        return None
    response = web.Response(headers={"X-Accel-Redirect": f"{prefix.rstrip('/')}/{loc.rel}{suffix}"})
    response[STATIC] = True  # nginx's location adds the CORS headers
    return response


async def status(request: web.Request) -> web.Response:
    loc, doc = conversation(request)
    if doc["status"] in TERMINAL and loc.uuid not in request.app[RUNNER].runs:
        if response := accel(request, loc, ".json"):
            return response
    doc = request.app[RUNNER].with_answer(loc, doc)
    return web.json_response(public_view(doc), dumps=_dumps)


def last_event_id(request: web.Request) -> int | None:
    value = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    value = (value or "").strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        return None  # not an id offloadd wrote: read from the start
    return int(value)


async def events(request: web.Request) -> web.StreamResponse:
    loc, _ = conversation(request, query_token=True)
    path = request.app[STORE].txt_path(loc)
    resume = last_event_id(request)
    if resume is None and request.app[CONFIG].accel_redirect and finished(path):
        if response := accel(request, loc, ".txt"):
            return response
    return await respond(request, request.app[HUB], path, resume, cors_headers(request))


async def stop(request: web.Request) -> web.Response:
    loc, _ = conversation(request)
    doc = await request.app[RUNNER].stop(loc)
    answer = {
        "status": "success",
        "conversation_id": doc["conversation_id"],
        "conversation_status": doc["status"],
    }
    if doc["status"] not in TERMINAL:
        answer["stop_requested"] = True
    return web.json_response(answer)


# --- the rest -------------------------------------------------------------------------


async def page(request: web.Request) -> web.FileResponse:
    """The chat page: try the service in a browser."""
    return web.FileResponse(STATIC_DIR / "index.html")


async def info(request: web.Request) -> web.Response:
    """What a client needs to know before its first request."""
    config = request.app[CONFIG]
    body = {
        "name": "offloadd",
        "version": __version__,
        "auth": config.auth,
        "default_model": config.default_model,
        "upstream": "mock" if config.uses_mock else shown_url(request.app[UPSTREAM_URL]),
        "create": ["POST /v1/stream-chatgpt", "POST /v1/async-chatgpt"],
    }
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render()
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(), headers={"Access-Control-Allow-Origin": "*"})


async def healthz(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    body = {
        "status": "shutting_down" if runner.closing else "ok",
        "running": len(runner.runs),
        "daemon": runner.registry.owner,
    }
    return web.json_response(body, status=503 if runner.closing else 200)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()
