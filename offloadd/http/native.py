"""The HTTP handlers: each only translates between HTTP and a use case (create, read, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from offloadd import __version__
from offloadd.config import Config
from offloadd.domain.access import (
    TOKEN_QUERY,
    any_allows,
)
from offloadd.domain.status import TERMINAL, public_view
from offloadd.domain.validate import parse_body
from offloadd.domain.webhooks import shown_url
from offloadd.errors import (
    ApiError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from offloadd.http.appkeys import (
    CONFIG,
    CREATOR,
    HUB,
    METRICS,
    RUNNER,
    STATIC,
    STORE,
    UPSTREAM_URL,
)
from offloadd.http.middleware import cors_headers
from offloadd.http.openapi import document
from offloadd.requests.create import NewRequest
from offloadd.requests.readers import respond
from offloadd.storage.layout import Location
from offloadd.storage.store import StorageError
from offloadd.storage.transcript import finished

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())
MOCK_KEY = "offloadd-mock-key"
# host[:port] as a URL may hold it: a name, an IPv4 address or a bracketed IPv6 one
HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)


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


def upstream_key(request: web.Request, bearer_too: bool = False) -> str:
    """`X-OpenAI-API-Key`, else the server's own key; for the OpenAI SDK's endpoints with
    auth off (`bearer_too`), the SDK's own `Authorization: Bearer` (a plain base_url swap)."""
    config = request.app[CONFIG]
    key = request.headers.get("X-OpenAI-API-Key") or config.upstream_key
    bearer = request.headers.get("Authorization", "")
    if not key and bearer_too and not config.auth and bearer[:7].lower() == "bearer ":
        key = bearer[7:].strip()
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


def counting_creates(handler: Handler) -> Handler:
    """A create endpoint whose outcomes are counted in /metrics."""

    async def counted(request: web.Request) -> web.StreamResponse:
        created = request.app[METRICS].created
        try:
            response = await handler(request)
        except ApiError as e:
            created[request.path, e.code] += 1
            raise
        except StorageError:
            created[request.path, "storage_unavailable"] += 1
            raise
        created[request.path, "accepted"] += 1
        return response

    return counted


async def create(request: web.Request) -> web.StreamResponse:
    """Store the request, start its upstream call in a task, answer with its URLs at once."""
    return await counting_creates(_create)(request)


async def read_create(request: web.Request) -> tuple[str | None, bytes]:
    """What every create endpoint reads first, in this order: the caller's key (401
    before anything else), the content type and size, then the body (in time)."""
    config = request.app[CONFIG]
    caller = api_key(request) if config.auth else None
    await request.app[CREATOR].admit(caller)
    _check_json(request)
    return caller, await _body(request, config)


async def _create(request: web.Request) -> web.Response:
    """Translate the HTTP request into a `NewRequest`; the rules live in `create.py`."""
    config, creator = request.app[CONFIG], request.app[CREATOR]
    caller, body = await read_create(request)
    new = NewRequest(
        kind=1 if request.path == "/v1/stream-chatgpt" else 2,
        body=body,
        chat=parse_body(body, config),
        upstream_key=upstream_key(request),
        organization=request.headers.get("X-OpenAI-Organization"),
        base_url=public_base(request),
        caller=caller,
        created_at=time.time(),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    created = await creator.create(new)
    return web.json_response(created.answer, headers=created.headers)


async def _body(request: web.Request, config: Config) -> bytes:
    """The body, if it arrives within `--body-timeout` (a slow client holds no slot forever)."""
    try:
        async with asyncio.timeout(config.body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {config.body_timeout:g} s", code="body_timeout"
        ) from None


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


async def conversation(request: web.Request, query_token: bool = False) -> tuple[Location, dict]:
    """The conversation a reading URL names, if the caller may see it; 404 otherwise,
    so a private conversation's existence is not revealed."""
    loc = locate(request)
    doc = await request.app[RUNNER].document(loc)  # one read: a missing file is a missing document
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
    loc, doc = await conversation(request)
    if doc["status"] in TERMINAL and not request.app[RUNNER].is_running(loc):
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
    loc = locate(request)
    path, hub = request.app[STORE].txt_path(loc), request.app[HUB]
    if loc.scope != "pub":
        await conversation(request, query_token=True)
    elif path not in hub.tails and not path.exists():
        # public: the URL is the capability. One stat on the loop, as the tail's own open
        # and reads are: a crowd arriving at once must not queue a thread hop each
        raise NotFound("no such conversation")
    _bound_send_buffer(request, request.app[CONFIG].reader_send_buffer)
    resume = last_event_id(request)
    if resume is None and request.app[CONFIG].accel_redirect:
        if await asyncio.to_thread(finished, path) and (response := accel(request, loc, ".txt")):
            return response
    return await respond(request, hub, path, resume, cors_headers(request))


def _bound_send_buffer(request: web.Request, size: int) -> None:
    """A reader that does not read costs at most `size` of kernel memory."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def stop(request: web.Request) -> web.Response:
    loc, _ = await conversation(request)
    doc = await request.app[RUNNER].stop(loc)
    if doc is None:  # removed meanwhile (retention)
        raise NotFound("no such conversation")
    answer = {
        "status": "success",
        "conversation_id": doc["conversation_id"],
        "conversation_status": doc["status"],
    }
    if doc["status"] not in TERMINAL:
        answer["stop_requested"] = True
    return web.json_response(answer)


# --- the rest -------------------------------------------------------------------------


async def static_file(request: web.Request) -> web.FileResponse:
    """The page's own files, and nothing else under `static/`."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise NotFound("no such file")
    return web.FileResponse(STATIC_DIR / name)


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
        "create": [
            "POST /v1/stream-chatgpt",
            "POST /v1/async-chatgpt",
            "POST /v1/chat/completions",
        ],
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
    return web.json_response(
        document(request.app[CONFIG]), headers={"Access-Control-Allow-Origin": "*"}
    )


async def healthz(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    body = {
        "status": "shutting_down" if runner.closing else "ok",
        "running": runner.running,
        "daemon": runner.owner,
    }
    return web.json_response(body, status=503 if runner.closing else 200)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()
