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

from offloadd.errors import BadRequest, NotFound, RequestTimeout
from offloadd.http import durable
from offloadd.http.appkeys import CONFIG, STREAMS
from offloadd.http.common import public_base
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


async def put(request: web.Request) -> web.Response:
    """Create a stream (or a fork of one); the same again is a 200."""
    path, headers = stream_path(request), request.headers
    ttl, expires_at, expires_ms = _expiry(headers)
    fork_from, fork_offset, sub_offset = _fork(headers)
    content_type = headers.get("Content-Type")
    if content_type is not None and not MEDIA.match(content_type.strip()):
        content_type = None
    created = await request.app[STREAMS].create(
        Create(
            path=path,
            content_type=content_type.strip() if content_type else None,
            body=await _body(request),
            ttl=ttl,
            expires_at=expires_at,
            expires_ms=expires_ms,
            closed=is_true(headers.get(CLOSED)),
            fork_from=fork_from,
            fork_offset=fork_offset,
            sub_offset=sub_offset,
        )
    )
    extra = {"Content-Type": created.content_type}
    if created.created:
        extra["Location"] = public_base(request) + request.raw_path.split("?", 1)[0]
    return _answer(201 if created.created else 200, created.tail, created.closed, extra)


async def post(request: web.Request) -> web.Response:
    """Append, append and close, or close."""
    path, headers = stream_path(request), request.headers
    producer = _producer(headers)
    done = await append(
        request.app[STREAMS],
        Append(
            path=path,
            body=await _body(request),
            content_type=headers.get("Content-Type"),
            close=is_true(headers.get(CLOSED)),
            seq=headers.get(SEQ),
            producer=producer,
        ),
    )
    extra = {}
    if done.producer is not None:
        extra = {PRODUCER_EPOCH: str(done.producer[0]), PRODUCER_SEQ: str(done.producer[1])}
    status = 200 if producer is not None and done.new_data else 204
    return _answer(status, done.tail, done.closed, extra)


async def delete(request: web.Request) -> web.Response:
    await request.app[STREAMS].delete(stream_path(request))
    return web.Response(status=204, headers=SECURITY_HEADERS)


async def get(request: web.Request) -> web.StreamResponse:
    """Read by the protocol: catch-up, long-poll or SSE (each touches a sliding TTL)."""
    durable.read_position(request)  # a malformed offset is a 400 before anything else
    source, _ = await request.app[STREAMS].open(stream_path(request), touch=True)
    return await durable.read(request, source)


async def head(request: web.Request) -> web.Response:
    source, chunk = await request.app[STREAMS].open(stream_path(request), touch=False)
    return durable.head(source, chunk.tail, chunk.closed)
