"""The original's endpoints (create, status, stream, stop) and the service's own (the page,
`/v1/info`, health, metrics, OpenAPI): each only translates between HTTP and a use case."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import orjson
from aiohttp import web

from offloadd import __version__
from offloadd.domain.access import (
    any_allows,
)
from offloadd.domain.status import TERMINAL, StatusDocument, public_view
from offloadd.domain.validate import parse_body
from offloadd.domain.webhooks import shown_url
from offloadd.errors import (
    NotFound,
)
from offloadd.http import durable
from offloadd.http.appkeys import (
    CONFIG,
    CREATE_ENDPOINTS,
    CREATOR,
    HUB,
    METRICS,
    RUNNER,
    STATIC,
    STORE,
    UPSTREAM_URL,
)
from offloadd.http.common import (
    json_bytes_response,
    public_base,
    read_create,
    tokens,
    upstream_key,
)
from offloadd.http.events import respond
from offloadd.http.middleware import cors_headers
from offloadd.http.openapi import document
from offloadd.protocol.durable import NOW
from offloadd.requests.create import NewRequest
from offloadd.requests.sources import AnswerSource
from offloadd.storage.layout import Kind, Location
from offloadd.storage.transcript import finished

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file())


# --- create ---------------------------------------------------------------------------


async def create(request: web.Request) -> web.Response:
    """Store the request, start its upstream call in a task, answer with its URLs at once:
    the HTTP request becomes a `NewRequest`; the rules live in `requests/create.py`."""
    config, creator = request.app[CONFIG], request.app[CREATOR]
    caller, body = await read_create(request)
    new = NewRequest(
        kind=Kind.STREAM if request.path == "/v1/stream-chatgpt" else Kind.ASYNC,
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
    return json_bytes_response(created.answer, created.headers)


# --- reading URLs ---------------------------------------------------------------------


def locate(request: web.Request) -> Location:
    info = request.match_info
    loc = Location.parse(info["scope"], info["stamp"], info["uuid"])
    if loc is None:
        raise NotFound("no such conversation")
    return loc


async def conversation(
    request: web.Request, query_token: bool = False
) -> tuple[Location, StatusDocument]:
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
    """The answer's stream: EventSource SSE, or — with `?offset=` (and on HEAD) — the
    Durable Streams read protocol over the same bytes."""
    loc = locate(request)
    path, hub = request.app[STORE].txt_path(loc), request.app[HUB]
    if loc.scope != "pub":
        await conversation(request, query_token=True)
    elif path not in hub.tails and not path.exists():
        # public: the URL is the capability. One stat on the loop, as the tail's own open
        # and reads are: a crowd arriving at once must not queue a thread hop each
        raise NotFound("no such conversation")
    if request.method == "HEAD" or "offset" in request.query:
        source = answer_source(request, loc, path)
        if request.method == "HEAD":
            chunk = await source.read(NOW)
            return durable.head(source, chunk.tail, chunk.closed)
        return await durable.read(request, source)
    resume = last_event_id(request)
    if resume is None and request.app[CONFIG].accel_redirect:
        if await asyncio.to_thread(finished, path) and (response := accel(request, loc, ".txt")):
            return response
    return await respond(request, hub, path, resume, cors_headers(request))


def answer_source(request: web.Request, loc: Location, path: Path) -> AnswerSource:
    """An answer as a Durable Stream: a private one's ETag is keyed by the token it was
    read with, and caches keep it private."""
    key = loc.uuid
    if private := loc.scope != "pub":
        seen = "\n".join(tokens(request, query_too=True)).encode()
        key += "." + hashlib.sha256(seen).hexdigest()[:16]
    return AnswerSource(request.app[HUB], path, key, private)


async def stop(request: web.Request) -> web.Response:
    loc, _ = await conversation(request)
    doc = await request.app[RUNNER].stop(loc)
    if doc is None:  # removed meanwhile (retention)
        raise NotFound("no such conversation")
    answer: dict[str, object] = {
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
    config, creates = request.app[CONFIG], request.app[CREATE_ENDPOINTS]
    body = {
        "name": "offloadd",
        "version": __version__,
        "auth": config.auth,
        "default_model": config.default_model,
        "upstream": "mock" if config.uses_mock else shown_url(request.app[UPSTREAM_URL]),
        "anthropic_upstream": "mock" if config.anthropic_mock else shown_url(config.anthropic_url),
        "create": list(creates),  # from the route table
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
