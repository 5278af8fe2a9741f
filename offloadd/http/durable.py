"""The Durable Streams read path over HTTP (PROTOCOL.md §5.5–§5.8): catch-up GET,
long-poll, SSE and HEAD of any *source* (`requests/sources.py`) — a model answer or an
application stream. The protocol's rules (offsets, cursor, framing) are
`protocol/durable.py`; this module only turns them into answers."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from offloadd.errors import BadRequest, NotFound
from offloadd.http.appkeys import CONFIG
from offloadd.protocol.durable import (
    BINARY,
    CLOSED,
    CURSOR,
    JSON,
    NEXT_OFFSET,
    NOW,
    SECURITY_HEADERS,
    SSE_ENCODING,
    UP_TO_DATE,
    BadOffset,
    Control,
    cursor,
    etag,
    format_offset,
    json_array,
    query_offset,
    sse_control,
    sse_data,
)
from offloadd.requests.sources import Chunk, Source

LIVE_MODES = ("long-poll", "sse")
IMMUTABLE = "max-age=31536000, immutable"


def read_position(request: web.Request, default: int | None = 0) -> tuple[int, str | None]:
    """The byte position and live mode a read asks for: a 400 for a malformed offset, or
    a live mode without one."""
    try:
        pos = query_offset(request.query.getall("offset", []))
    except BadOffset as e:
        raise BadRequest(f"malformed offset: {e}", code="bad_offset") from None
    live = request.query.get("live")
    live = live if live in LIVE_MODES else None  # an unknown mode reads as catch-up
    if pos is None:
        if live:
            raise BadRequest(f"`live={live}` needs an `offset`", code="bad_offset")
        if default is None:
            raise BadRequest("an `offset` is required", code="bad_offset")
        pos = default
    return pos, live


async def read(request: web.Request, source: Source) -> web.StreamResponse:
    """GET of a source by the protocol: catch-up, long-poll or SSE."""
    pos, live = read_position(request)
    try:
        if live == "sse":
            return await _sse(request, source, pos)
        if live == "long-poll":
            return await _long_poll(request, source, pos)
        return _catch_up(request, source, await source.read(pos), pos == NOW)
    except BadOffset as e:
        raise BadRequest(f"bad offset: {e}", code="bad_offset") from None
    except FileNotFoundError:  # removed meanwhile (retention)
        raise NotFound("no such stream") from None


def head(source: Source, tail: int, closed: bool) -> web.Response:
    """HEAD: the tail offset, the content type, the closure; never cached."""
    headers = {
        **_base(source),
        NEXT_OFFSET: format_offset(tail),
        "Cache-Control": "no-store",
        **source.head_headers,
    }
    if closed:
        headers[CLOSED] = "true"
    return web.Response(headers=headers)


def _base(source: Source) -> dict:
    headers = {"Content-Type": source.content_type, **SECURITY_HEADERS}
    if source.private:
        headers["Vary"] = "Authorization"
    return headers


def _chunk_headers(source: Source, chunk: Chunk) -> dict:
    headers = {**_base(source), NEXT_OFFSET: format_offset(chunk.next)}
    if chunk.at_tail:
        headers[UP_TO_DATE] = "true"
    if chunk.finished:
        headers[CLOSED] = "true"
    return headers


def _cache(source: Source, chunk: Chunk, live: bool) -> str:
    """§10.1: a range that can never change (closed, or short of the tail) is immutable;
    one that reached an open tail is fresh briefly (a long-poll's carries its cursor in
    the URL, so a cache keyed by it cannot loop)."""
    scope = "private" if source.private else "public"
    if chunk.finished or not chunk.at_tail:
        return f"{scope}, {IMMUTABLE}"
    return f"{scope}, max-age={20 if live else 1}"


def _body(source: Source, data: bytes) -> bytes:
    return json_array(data) if source.kind == JSON else data


def _catch_up(
    request: web.Request, source: Source, chunk: Chunk, now: bool, extra: dict | None = None
) -> web.Response:
    headers = {**_chunk_headers(source, chunk), **(extra or {})}
    if now:  # `offset=now`: the tail as it is; a cache must not keep it
        headers["Cache-Control"] = "no-store"
        return web.Response(body=_body(source, b""), headers=headers)
    tag = etag(source.etag_key, chunk.start, chunk.next, chunk.finished)
    headers["ETag"] = tag
    headers["Cache-Control"] = _cache(source, chunk, extra is not None)
    if request.headers.get("If-None-Match") == tag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=_body(source, chunk.data), headers=headers)


def _cursor(request: web.Request) -> str:
    return cursor(time.time() * 1000, request.query.get("cursor"))


async def _long_poll(request: web.Request, source: Source, pos: int) -> web.Response:
    """Data after `pos` at once; at an open tail, wait for some (a 204 on timeout); at a
    closed one, a 204 with `Stream-Closed` at once."""
    timeout = request.app[CONFIG].long_poll_seconds
    asked_now = pos == NOW
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with source.watch() as watch:
        while True:
            changed = watch.arm()
            chunk = await source.read(pos)
            pos = chunk.start  # `now` is the tail when the wait began
            remaining = deadline - loop.time()
            if chunk.data or chunk.finished or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed
    extra = {CURSOR: _cursor(request)}
    if chunk.data:
        response = _catch_up(request, source, chunk, False, extra)
        if asked_now:
            # `offset=now` is the tail when it is asked: the same URL asked a moment
            # later wants later bytes, so no cache may answer it with these (a shared
            # cache would hand a late reader old bytes as new ones).
            response.headers["Cache-Control"] = "no-store"
        return response
    headers = {**_chunk_headers(source, chunk), **extra}
    headers["Cache-Control"] = (
        f"{'private' if source.private else 'public'}, {IMMUTABLE}"
        if chunk.finished
        else "no-store"  # an open stream's 204 changes as soon as data comes
    )
    return web.Response(status=204, headers=headers)


async def _sse(request: web.Request, source: Source, pos: int) -> web.StreamResponse:
    """`live=sse`: each read as one data event and its control event, keep-alive controls
    while idle, the connection ended at closure or after `--sse-seconds` (so caches can
    collapse the readers who arrive next)."""
    config = request.app[CONFIG]
    headers = {
        **_base(source),
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if source.kind == BINARY:
        headers[SSE_ENCODING] = "base64"
    pos = (await source.read(pos, 0)).start  # a bad offset is a 400 before the 200; `now`
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    close_at = loop.time() + config.sse_seconds
    token = _cursor(request)
    with contextlib.suppress(ConnectionResetError, FileNotFoundError):
        async with source.watch() as watch:
            sent = False
            while True:
                changed = watch.arm()  # before the read: nothing written after it is missed
                chunk = await source.read(pos)
                pos = chunk.next
                control = Control(format_offset(pos), token, chunk.at_tail, chunk.finished)
                if chunk.data or not sent or chunk.finished:
                    data = sse_data(chunk.data, source.kind) if chunk.data else b""
                    await response.write(data + sse_control(control))
                    sent = True
                if chunk.finished:
                    break
                if not chunk.at_tail:
                    if loop.time() >= close_at:  # a reader far behind reconnects too
                        break
                    continue
                wait = min(config.keepalive_seconds, close_at - loop.time())
                if wait <= 0:
                    break
                done, _ = await asyncio.wait({changed}, timeout=wait)
                if not done:
                    changed.cancel()
                    up = Control(format_offset(pos), token, True)
                    await response.write(sse_control(up))
        await response.write_eof()
    return response
