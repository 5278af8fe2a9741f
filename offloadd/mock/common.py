"""What the APIs of the mock share: the requests it saw, the switches its model name
carries (`mock?tokens=500&delay_ms=20&stall_after=7`), taking a request in, refusing one
as OpenAI would (Anthropic's refusals are `messages.py`'s), and when to misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

STATUS_MESSAGES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "Incorrect API key provided: {key}."),
    403: ("invalid_request_error", "You are not allowed to access this model."),
    404: ("invalid_request_error", "The model does not exist."),
    429: ("requests", "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", "The server had an error while processing your request."),
    502: ("server_error", "Bad gateway."),
    503: ("server_error", "The engine is currently overloaded, please try again later."),
}


@dataclass
class Seen:
    """One request the mock received, as `/_mock/requests` lists it."""

    model: str
    authorized: bool
    stream: bool
    body: dict
    received_at: float = field(default_factory=time.time)
    chunks_sent: int = 0
    finished: bool = False
    client_closed: bool = False
    closed_at: float | None = None
    peer_port: int | None = None  # the caller's side of the connection: reused or new
    headers: dict = field(default_factory=dict)  # Messages API: the anthropic-* it was sent


SEEN = web.AppKey("seen", deque)
SEEN_KEPT = 10_000  # requests `/_mock/requests` lists, the newest


@dataclass(frozen=True)
class Behaviour:
    tokens: int | None = None
    delay_ms: float = 5.0
    stamp: bool = False
    status: int | None = None
    disconnect_after: int | None = None
    stall_after: int | None = None
    garbage_after: int | None = None
    wait_ms: float = 0.0  # once, before the first chunk (lets benchmark readers connect first)
    retry_after: int = 1
    error_after: int | None = None  # Messages API: a mid-stream `event: error` (overloaded)

    @classmethod
    def from_model(cls, model: str) -> Behaviour:
        """The switches in `mock?a=1&b=2`; unknown or malformed ones are ignored."""
        if not model.startswith("mock"):
            return cls()
        values: dict = {}
        for key, value in parse_qsl(model.partition("?")[2]):
            if key == "stamp":
                values[key] = value not in ("0", "false", "")
            elif key in cls.__dataclass_fields__:
                with contextlib.suppress(ValueError):
                    values[key] = float(value) if key in ("delay_ms", "wait_ms") else int(value)
        return cls(**values)


def dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


class Refuse(Protocol):
    """How an API of the mock answers an error: its status, message, and `retry-after`."""

    def __call__(
        self, status: int, message: str = "", retry_after: int = 1, key: str = ""
    ) -> web.Response: ...


def bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


async def intake(
    request: web.Request, refuse: Refuse | None = None, key_of: Callable = bearer
) -> tuple[Seen, Behaviour] | web.Response:
    """What every API of the mock does first: read and record the request, refuse it as
    the API would (bad JSON, no key: `refuse`, OpenAI's by default) or as its model asks
    (`mock?status=429`). `key_of` finds the caller's key (OpenAI's: a Bearer)."""
    refuse = refuse or _error
    auth = key_of(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return refuse(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return refuse(400, "The body must be a JSON object.")
    model = str(body.get("model") or "mock")
    entry = Seen(model, bool(auth), bool(body.get("stream")), body)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    entry.peer_port = peer[1] if isinstance(peer, tuple) else None
    request.app[SEEN].append(entry)
    behaviour = Behaviour.from_model(model)
    if not auth:
        return refuse(401, "You didn't provide an API key.")
    if behaviour.status:
        return refuse(behaviour.status, retry_after=behaviour.retry_after, key=auth)
    return entry, behaviour


def _error(status: int, message: str = "", retry_after: int = 1, key: str = "") -> web.Response:
    kind, default = STATUS_MESSAGES.get(status, ("api_error", f"HTTP {status}."))
    body = {
        "error": {
            "message": message or default.format(key=key),
            "type": kind,
            "param": None,
            "code": None,
        }
    }
    headers = {"Retry-After": str(retry_after)} if status == 429 else {}
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def fault_at(behaviour: Behaviour, sent: int) -> str | None:
    for name in ("disconnect", "stall", "garbage"):
        after = getattr(behaviour, f"{name}_after")
        if after is not None and sent == after:
            return name
    return None


async def next_chunk(
    request: web.Request,
    response: web.StreamResponse,
    entry: Seen,
    behaviour: Behaviour,
    garbage: bytes,
) -> bool:
    """Before a stream's next chunk: its fault, if one is due (`disconnect` drops the
    connection: False, the stream is over; `stall` never returns; `garbage` writes bytes
    no parser accepts), then the pause between chunks."""
    fault = fault_at(behaviour, entry.chunks_sent)
    if fault == "disconnect":
        if request.transport:
            request.transport.abort()
        entry.finished = True
        return False
    if fault == "stall":
        await asyncio.Event().wait()  # until the client gives up and closes
    if fault == "garbage":
        await response.write(garbage)
    await asyncio.sleep(behaviour.delay_ms / 1000)
    return True


async def streamed(entry: Seen, stream: Awaitable[web.StreamResponse]) -> web.StreamResponse:
    """A streamed answer, and whether its client left before it ended. A client that left
    (offloadd stops by closing its connection) is what a stream expects, not an error: a
    reset is answered with nothing, rather than left for aiohttp to log as a traceback."""
    try:
        return await stream
    except (asyncio.CancelledError, ConnectionResetError) as e:
        entry.client_closed = not entry.finished
        entry.closed_at = time.time()
        if isinstance(e, asyncio.CancelledError):
            raise
        return web.Response()


async def send_named(response: web.StreamResponse, entry: Seen, event: dict) -> None:
    """One typed event, named by its `type` as the Responses and Messages APIs send them."""
    name = str(event["type"]).encode()
    await response.write(b"event: " + name + b"\ndata: " + orjson.dumps(event) + b"\n\n")
    entry.chunks_sent += 1


async def ended(response: web.StreamResponse, entry: Seen) -> web.StreamResponse:
    """The stream's end, all of it sent."""
    entry.finished = True
    await response.write_eof()
    return response
