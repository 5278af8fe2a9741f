"""The request helpers the endpoint modules share, so that none imports another: what every
create reads first (the caller's key, the content type and size, the body in time), the
base of the URLs handed out, the upstream key; and the OpenAI-shaped endpoints' common
path: the offloaded request behind an SDK call, followed from its first byte or awaited,
its failures answered as OpenAI answers its own."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from offloadd.config import Config
from offloadd.domain.access import TOKEN_QUERY
from offloadd.domain.status import StatusDocument
from offloadd.domain.validate import ChatRequest
from offloadd.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from offloadd.http.appkeys import CONFIG, CREATOR, HUB, RUNNER, STORE
from offloadd.http.events import respond
from offloadd.http.middleware import cors_headers
from offloadd.protocol.wire import Dialect
from offloadd.requests.create import Created, NewRequest
from offloadd.storage.layout import Kind, Location, parse_url
from offloadd.storage.transcript import STOPPED_MESSAGE

MOCK_KEY = "offloadd-mock-key"
# host[:port] as a URL may hold it: a name, an IPv4 address or a bracketed IPv6 one
HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)
STOP_ON_DISCONNECT = "X-Offloadd-Stop-On-Disconnect"
URL_HEADERS = {
    "status_url": "X-Offloadd-Status-Url",
    "stream_events_url": "X-Offloadd-Stream-Url",
    "stop_url": "X-Offloadd-Stop-Url",
}


# --- what every create reads ------------------------------------------------------------


async def read_create(request: web.Request) -> tuple[str | None, bytes]:
    """What every create endpoint reads first, in this order: the caller's key (401
    before anything else), the content type and size, then the body (in time)."""
    config = request.app[CONFIG]
    caller = api_key(request) if config.auth else None
    await request.app[CREATOR].admit(caller)
    _check_json(request)
    return caller, await read_body(request, config)


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
    if not _valid_host(host):
        raise BadRequest("the request's host is not a valid host name", code="invalid_host")
    return f"{proto}://{host}"


@functools.lru_cache(maxsize=256)
def _valid_host(host: str) -> bool:
    """Whether `host` is one a URL may hold (a server sees the same few, request after
    request)."""
    return HOST.fullmatch(host) is not None


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


ANTHROPIC_KEY = "X-Anthropic-API-Key"
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta", "anthropic-workspace-id")


def anthropic_key(request: web.Request) -> str:
    """The Anthropic key: with auth off the SDK's own (`x-api-key`, or since SDK 2.0
    `Authorization: Bearer`); with auth on those carry the offloadd key, so it comes from
    `X-Anthropic-API-Key` (the SDK's `default_headers`) or the server's own."""
    config, headers = request.app[CONFIG], request.headers
    key = headers.get(ANTHROPIC_KEY)
    bearer = headers.get("Authorization", "")
    if not key and not config.auth:
        key = headers.get("X-API-Key") or (
            bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
        )
    key = key or config.anthropic_key or (MOCK_KEY if config.anthropic_mock else None)
    if not key:
        raise Unauthorized(
            f"send your Anthropic key in the `{ANTHROPIC_KEY}` header "
            "(this server has no Anthropic key of its own)",
            code="missing_anthropic_key",
        )
    return key


def anthropic_headers(request: web.Request) -> dict:
    """What the upstream needs of the caller's headers: its API version and betas."""
    return {k: v for k in ANTHROPIC_HEADERS if (v := request.headers.get(k))}


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


async def read_body(request: web.Request, config: Config) -> bytes:
    """The body, if it arrives within `--body-timeout` (a slow client holds no slot forever);
    a body already received whole (most are, with their headers) needs no timer."""
    if request.content.is_eof():
        return await request.read()
    try:
        async with asyncio.timeout(config.body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {config.body_timeout:g} s", code="body_timeout"
        ) from None


# --- the OpenAI-shaped endpoints ----------------------------------------------------------


class UpstreamFailed(ApiError):
    """The offloaded call ended in error: answered as OpenAI answers its own errors."""

    status = 502
    code = "upstream_error"
    upstream_type: str | None = None  # Anthropic's own `error.type`, when it said one


async def create_for_sdk(
    request: web.Request,
    caller: str | None,
    body: bytes,
    chat: ChatRequest,
    dialect: Dialect,
    key: str | None = None,
    upstream_headers: dict | None = None,
) -> tuple[Created, Location]:
    """The offloaded request behind an SDK call (OpenAI's; Anthropic's with its `key` and
    `upstream_headers`), and where it lives."""
    created = await request.app[CREATOR].create(
        NewRequest(
            kind=Kind.STREAM,
            endpoint=request.path,
            dialect=dialect,
            body=body,
            chat=chat,
            upstream_key=key or upstream_key(request, bearer_too=True),
            organization=request.headers.get("OpenAI-Organization")
            or request.headers.get("X-OpenAI-Organization"),
            base_url=public_base(request),
            caller=caller,
            created_at=time.time(),
            idempotency_key=request.headers.get("Idempotency-Key"),
            upstream_headers=upstream_headers,
        )
    )
    found = parse_url(created.answer["endpoints"]["status_url"])
    assert found is not None  # we made this URL
    return created, found[1]


def stops_on_disconnect(request: web.Request) -> bool:
    return request.headers.get(STOP_ON_DISCONNECT, "").lower() in ("1", "true", "yes")


def url_headers(created: Created) -> dict:
    answer = created.answer
    headers = {URL_HEADERS[k]: v for k, v in answer["endpoints"].items() if k in URL_HEADERS}
    if token := answer["authorization"].get("bearer_token"):
        headers["X-Offloadd-Bearer-Token"] = token
    headers["X-Offloadd-Conversation-Id"] = answer["conversation_id"]
    return {**headers, **(created.headers or {})}


async def follow(
    request: web.Request, loc: Location, headers: dict, stop_on_disconnect: bool
) -> web.StreamResponse:
    """The request's transcript from its start: exactly the stream the SDK expects."""
    path, runner = request.app[STORE].txt_path(loc), request.app[RUNNER]
    try:
        response = await respond(
            request,
            request.app[HUB],
            path,
            None,
            {
                **cors_headers(request),
                **headers,
            },
        )
    finally:  # the reader left before the end (or was cancelled as it left)
        if stop_on_disconnect and runner.is_running(loc):
            runner.cancel(loc.uuid)
    return response


async def answer(
    request: web.Request, loc: Location, headers: dict, stream: bool
) -> web.StreamResponse:
    """An SDK's answer: the stream followed from its first byte, or the object once done."""
    if stream:
        return await follow(request, loc, headers, stops_on_disconnect(request))
    return await completion(request, loc, headers)


async def completion(
    request: web.Request,
    loc: Location,
    headers: dict,
    render: Callable[[StatusDocument], dict | None] = lambda doc: doc["response"]["body"],
) -> web.Response:
    """`stream: false`: the answer once the request is done (`render` makes it of the
    document: a `chat.completion`, or a Responses API object); failures as OpenAI's."""
    doc = await request.app[RUNNER].until_done(loc)
    assert doc is not None
    if doc["status"] == "done":
        return web.json_response(render(doc), headers=headers)
    raise failure(doc, headers)


def failure(doc: StatusDocument, headers: dict) -> ApiError:
    """A request that ended in error or was stopped, as the SDK's exception."""
    error = doc.get("error") or {"code": "stopped", "message": STOPPED_MESSAGE}
    failed = UpstreamFailed(error["message"], code=error["code"])
    failed.upstream_type = error.get("upstream_type")
    status = error.get("upstream_status")
    if error["code"] == "stopped" or doc["status"] == "stopped":
        failed.status = 409
    elif isinstance(status, int) and 400 <= status < 600:
        failed.status = status
    elif failed.upstream_type == "overloaded_error":  # Anthropic's mid-stream `error`
        failed.status = 529  # is its HTTP 529 when the call is not streamed
    retry_after = error.get("retry_after")
    if failed.status == 429 and isinstance(retry_after, int | float):
        headers = {**headers, "Retry-After": str(round(retry_after))}
    failed.headers = headers
    return failed


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


JSON_TYPE = "application/json; charset=utf-8"


def json_bytes_response(body: dict, headers: dict | None = None) -> web.Response:
    """A JSON answer serialised by orjson (aiohttp's `json_response` uses the standard
    library's, several times slower: a create answers with one on every request)."""
    response = web.Response(body=orjson.dumps(body), headers=headers)
    response.headers["Content-Type"] = JSON_TYPE
    return response
