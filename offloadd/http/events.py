"""The SSE answer of one stream: resuming at a `Last-Event-ID`, then the hub's tail, with
each reader's kernel send buffer bounded whatever endpoint serves it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import cast

from aiohttp import web

from offloadd.requests.readers import Hub, drained
from offloadd.storage.transcript import resume_offset

RESUME_PATIENCE = 2.0  # seconds to wait for a Last-Event-ID this file does not hold yet
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class ResponseSink:
    """Where a reader's bytes go: the response (slow path, with back-pressure) and its
    transport and framing (the tail's fast path)."""

    __slots__ = ("request", "write", "chunked")

    def __init__(self, request: web.Request, response: web.StreamResponse):
        self.request, self.write = request, response.write
        self.chunked = response.headers.get("Transfer-Encoding") == "chunked"

    def ready(self) -> asyncio.Transport | None:
        """The transport, when the fast path may write to it: open, and not backed up (a
        reader sent back for back-pressure stays on `write`, which waits for it to drain)."""
        transport = cast(asyncio.Transport | None, self.request.transport)
        return transport if drained(transport) else None


async def _resume(path: Path, last_id: int, interval: float) -> tuple[int, bool]:
    """Where to resume. Waits briefly for an id the file does not hold yet: a reader may
    have received it from another daemon whose poll came sooner than ours."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RESUME_PATIENCE
    while True:
        found = await resume_offset(path, last_id)
        if found.ended or found.highest >= last_id or loop.time() >= give_up:
            return found.offset, found.ended
        await asyncio.sleep(interval)


async def respond(
    request: web.Request, hub: Hub, path: Path, last_id: int | None, headers: dict
) -> web.StreamResponse:
    """The live SSE answer for one `.txt`; 204 when the reader already has the whole stream."""
    pos = 0
    if last_id is not None:
        pos, ended = await _resume(path, last_id, hub.interval)
        if ended:
            return web.Response(status=204, headers=headers)
    if hub.send_buffer:
        _bound_send_buffer(request, hub.send_buffer)
    response = web.StreamResponse(headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        await hub.pump(path, pos, ResponseSink(request, response))
        await response.write_eof()
    return response


def _bound_send_buffer(request: web.Request, size: int) -> None:
    """A reader that does not read costs at most `size` of kernel memory, whichever
    endpoint serves its stream."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
