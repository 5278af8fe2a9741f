"""Application streams over HTTP (Durable Streams at `/v1/stream/<path>`): PUT creates (or
forks), POST appends or closes, DELETE deletes, GET and HEAD read (`http/durable.py`).
Only the translation: headers in, the use cases' outcomes out (`requests/streams.py`,
`requests/appends.py`)."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from urllib.parse import unquote, urlsplit

from aiohttp import web

from offloadd.domain.access import token_hash
from offloadd.errors import BadRequest, NotFound, RequestTimeout
from offloadd.http import durable
from offloadd.http.appkeys import CONFIG, KEYS, STREAMS
from offloadd.http.common import api_key, public_base, tokens
from offloadd.keys.base import Charge
from offloadd.protocol.durable import (
    CLOSED,
    EXPIRES_AT,
    FORK_OFFSET,
    FORK_SUB_OFFSET,
    FORKED_FROM,
    NEXT_OFFSET,
    NOW,
    PRODUCER_EPOCH,
    PRODUCER_ID,
    PRODUCER_SEQ,
    SECURITY_HEADERS,
    SEQ,
    TTL,
    BadOffset,
    format_offset,
    parse_offset,
)
from offloadd.requests.appends import Append, Producer, append
from offloadd.requests.streams import Create
from offloadd.storage.layout import STREAMS_PREFIX

NATURAL = re.compile(r"0|[1-9]\d*")
DIGITS = re.compile(r"\d+")
MEDIA = re.compile(r"[\w-]+/[\w-]+")
MAX_SAFE = 2**53 - 1  # what a JavaScript client can count to
MAX_PATH = 1024
RESERVED = "__ds/"  # the protocol's subscription APIs (not served here)
# offloadd's own: a stream read with a token (as private answers are), shown once at creation
ACCESS = "Stream-Access"
READ_TOKEN = "Stream-Read-Token"


def stream_path(request: web.Request) -> str:
    path = request.match_info["path"]
    if path.startswith(RESERVED) or path == RESERVED[:-1]:
        raise NotFound("no such stream")
    if len(path) > MAX_PATH or "\x00" in path:
        raise BadRequest(f"a stream path has at most {MAX_PATH} characters", code="bad_path")
    return path


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _natural(name: str, value: str, pattern: re.Pattern = NATURAL) -> int:
    if not pattern.fullmatch(value) or int(value) > MAX_SAFE:
        raise BadRequest(f"`{name}` must be a non-negative integer", code=f"bad_{name.lower()}")
    return int(value)


def _expiry(headers) -> tuple[int | None, str | None, float | None]:
    ttl, at = headers.get(TTL), headers.get(EXPIRES_AT)
    if ttl is not None and at is not None:
        raise BadRequest("give `Stream-TTL` or `Stream-Expires-At`, not both", code="bad_expiry")
    if ttl is not None:
        return _natural(TTL, ttl), None, None
    if at is None:
        return None, None, None
    try:
        when = datetime.fromisoformat(at.strip())
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or "T" not in at.upper():
        raise BadRequest("`Stream-Expires-At` must be an RFC 3339 time", code="bad_expiry")
    return None, at, when.timestamp() * 1000


def _fork(headers) -> tuple[str | None, int | None, int]:
    source, offset, sub = (headers.get(h) for h in (FORKED_FROM, FORK_OFFSET, FORK_SUB_OFFSET))
    if source is None:
        if offset is not None or sub is not None:
            raise BadRequest("fork headers need `Stream-Forked-From`", code="bad_fork")
        return None, None, 0
    path = unquote(urlsplit(source.strip()).path)
    if not path.startswith(STREAMS_PREFIX) or len(path) == len(STREAMS_PREFIX):
        raise BadRequest("`Stream-Forked-From` is a stream's path here", code="bad_fork")
    position = None
    if offset is not None:
        try:
            position = parse_offset(offset.strip())
        except BadOffset:
            position = NOW
        if position == NOW or not re.fullmatch(r"\d{16}_\d{16}", offset.strip()):
            raise BadRequest("`Stream-Fork-Offset` is not an offset", code="bad_offset")
    sub_offset = 0 if sub is None else _natural(FORK_SUB_OFFSET, sub)
    return path[len(STREAMS_PREFIX) :], position, sub_offset


def _producer(headers) -> Producer | None:
    values = [headers.get(h) for h in (PRODUCER_ID, PRODUCER_EPOCH, PRODUCER_SEQ)]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values) or not values[0]:
        raise BadRequest(
            "`Producer-Id`, `Producer-Epoch` and `Producer-Seq` go together",
            code="bad_producer",
        )
    pid, epoch, seq = values
    assert pid is not None and epoch is not None and seq is not None
    return Producer(
        pid, _natural(PRODUCER_EPOCH, epoch, DIGITS), _natural(PRODUCER_SEQ, seq, DIGITS)
    )


async def _body(request: web.Request) -> bytes:
    timeout = request.app[CONFIG].body_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None


def _answer(status: int, tail: int, closed: bool, extra: dict | None = None) -> web.Response:
    headers = {**SECURITY_HEADERS, NEXT_OFFSET: format_offset(tail), **(extra or {})}
    if closed:
        headers[CLOSED] = "true"
    return web.Response(status=status, headers=headers)


async def _caller(request: web.Request, charged: bool) -> tuple[str | None, Charge | None]:
    """With auth on: the hash of the caller's API key (a stream's owner), and — for a
    create or an append, which count against the key's plan — its charge."""
    if not request.app[CONFIG].auth:
        return None, None
    key, keys = api_key(request), request.app[KEYS]
    if charged:
        return token_hash(key), await keys.charge(key)
    await keys.check(key)
    return token_hash(key), None


def _limits(charge: Charge | None) -> dict:
    return charge.limits.headers() if charge is not None and charge.limits else {}


def _secrets(request: web.Request) -> list[str]:
    """Whatever may open a private stream: its read token (header or `?token=`), or the
    owner's API key."""
    found = tokens(request, query_too=True)
    if key := request.headers.get("X-API-Key"):
        found.append(key)
    return found


async def put(request: web.Request) -> web.Response:
    """Create a stream (or a fork of one); the same again is a 200."""
    path, headers = stream_path(request), request.headers
    _expiry(headers)  # malformed headers are a 400 before the key is counted
    _fork(headers)
    content_type = headers.get("Content-Type")
    if content_type is not None and not MEDIA.match(content_type.strip()):
        content_type = None
    access = headers.get(ACCESS, "public").strip().lower()
    if access not in ("public", "private"):
        raise BadRequest(f"`{ACCESS}` is `public` or `private`", code="invalid_access")
    body = await _body(request)
    owner, charge = await _caller(request, charged=True)
    try:
        created = await _create(request, path, content_type, body, owner, access == "private")
    except BaseException:
        if charge is not None:
            await request.app[KEYS].refund(charge)
        raise
    if not created.created and charge is not None:  # the same again: nothing was made
        await request.app[KEYS].refund(charge)
        charge = None
    extra = {"Content-Type": created.content_type, **_limits(charge)}
    if created.created:
        extra["Location"] = public_base(request) + request.raw_path.split("?", 1)[0]
    if created.token:
        extra[READ_TOKEN] = created.token
    return _answer(201 if created.created else 200, created.tail, created.closed, extra)


async def _create(
    request: web.Request,
    path: str,
    content_type: str | None,
    body: bytes,
    owner: str | None,
    private: bool,
):
    headers = request.headers
    ttl, expires_at, expires_ms = _expiry(headers)
    fork_from, fork_offset, sub_offset = _fork(headers)
    return await request.app[STREAMS].create(
        Create(
            path=path,
            content_type=content_type.strip() if content_type else None,
            body=body,
            ttl=ttl,
            expires_at=expires_at,
            expires_ms=expires_ms,
            closed=is_true(headers.get(CLOSED)),
            fork_from=fork_from,
            fork_offset=fork_offset,
            sub_offset=sub_offset,
            owner=owner,
            private=private,
        )
    )


async def post(request: web.Request) -> web.Response:
    """Append, append and close, or close."""
    path, headers = stream_path(request), request.headers
    producer = _producer(headers)
    body = await _body(request)
    owner, charge = await _caller(request, charged=True)
    try:
        done = await append(
            request.app[STREAMS],
            Append(
                path=path,
                body=body,
                content_type=headers.get("Content-Type"),
                close=is_true(headers.get(CLOSED)),
                seq=headers.get(SEQ),
                producer=producer,
                owner=owner,
            ),
        )
    except BaseException:
        if charge is not None:
            await request.app[KEYS].refund(charge)
        raise
    extra = _limits(charge)
    if done.producer is not None:
        extra[PRODUCER_EPOCH] = str(done.producer[0])
        extra[PRODUCER_SEQ] = str(done.producer[1])
    status = 200 if producer is not None and done.new_data else 204
    return _answer(status, done.tail, done.closed, extra)


async def delete(request: web.Request) -> web.Response:
    path = stream_path(request)
    owner, _ = await _caller(request, charged=False)
    await request.app[STREAMS].delete(path, owner)
    return web.Response(status=204, headers=SECURITY_HEADERS)


async def get(request: web.Request) -> web.StreamResponse:
    """Read by the protocol: catch-up, long-poll or SSE (each touches a sliding TTL)."""
    durable.read_position(request)  # a malformed offset is a 400 before anything else
    path = stream_path(request)
    source, _ = await request.app[STREAMS].open(path, touch=True, secrets=_secrets(request))
    return await durable.read(request, source)


async def head(request: web.Request) -> web.Response:
    path = stream_path(request)
    source, chunk = await request.app[STREAMS].open(path, touch=False, secrets=_secrets(request))
    return durable.head(source, chunk.tail, chunk.closed)
