"""A stand-in for OpenAI's Chat Completions and Responses APIs (SPEC §8), for tests,
benchmarks and a first try (the Responses API is in `mock_responses.py`).

It is an external server as far as offloadd is concerned: it imports nothing of
offloadd's server modules, and offloadd reaches it over HTTP like any upstream.
The model name steers it: `mock?tokens=500&delay_ms=20&stall_after=7`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

MODELS = ("mock", "gpt-3.5-turbo", "gpt-4o-mini")
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


SEEN = web.AppKey("seen", list)


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


def make_mock_app() -> web.Application:
    """The mock as an aiohttp app; run it with `handler_cancellation=True` so a closed
    client connection is seen at once, not at the next write."""
    app = web.Application()
    app[SEEN] = []
    from offloadd.mock.responses import responses  # it builds on this module

    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_delete("/_mock/requests", _clear)
    return app


async def _models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "offloadd"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})


async def _requests(request: web.Request) -> web.Response:
    seen = request.app[SEEN]
    return web.json_response({"requests": [asdict(s) for s in seen]}, dumps=_dumps)


async def _clear(request: web.Request) -> web.Response:
    request.app[SEEN].clear()
    return web.json_response({"requests": []})


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


async def intake(request: web.Request) -> tuple[Seen, Behaviour] | web.Response:
    """What both APIs of the mock do first: read and record the request, refuse it as
    OpenAI would (bad JSON, no key) or as its model asks (`mock?status=429`)."""
    auth = request.headers.get("Authorization", "")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object.")
    model = str(body.get("model") or "mock")
    entry = Seen(model, bool(auth), bool(body.get("stream")), body)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    entry.peer_port = peer[1] if isinstance(peer, tuple) else None
    request.app[SEEN].append(entry)
    behaviour = Behaviour.from_model(model)
    if not auth:
        return _error(401, "You didn't provide an API key.")
    if behaviour.status:
        key = auth.removeprefix("Bearer ")
        return _error(behaviour.status, retry_after=behaviour.retry_after, key=key)
    return entry, behaviour


async def _completions(request: web.Request) -> web.StreamResponse:
    admitted = await intake(request)
    if isinstance(admitted, web.Response):
        return admitted
    entry, behaviour = admitted
    model, body = entry.model, entry.body
    words = _tokens(body, behaviour)
    if not body.get("stream"):
        entry.finished = True
        return web.json_response(_completion(model, words), dumps=_dumps)
    try:
        return await _stream(request, entry, behaviour, words)
    except (asyncio.CancelledError, ConnectionResetError):
        entry.client_closed = not entry.finished
        entry.closed_at = time.time()
        raise


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
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _tokens(body: dict, behaviour: Behaviour) -> list[str]:
    if behaviour.tokens is not None:
        return [f"t{i}" for i in range(behaviour.tokens)]
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"] or messages
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "").split() or ["…"]


def _chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(words: list[str]) -> dict:
    return {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}


def _completion(model: str, words: list[str]) -> dict:
    message = {"role": "assistant", "content": " ".join(words)}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(words),
    }


async def _stream(
    request: web.Request, entry: Seen, behaviour: Behaviour, words: list[str]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "openai-processing-ms": "1",
            "x-ratelimit-limit-requests": "10000",
        }
    )
    await response.prepare(request)
    cid, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", entry.model
    chunks: list[dict | None] = [_chunk(cid, model, {"role": "assistant", "content": ""})]
    if body_tools := entry.body.get("tools"):
        chunks += _tool_call_chunks(cid, model, body_tools, words)
    else:
        chunks += [None] * len(words)  # made when sent, so `stamp` is the send time
        chunks.append(_chunk(cid, model, {}, "stop"))
    usage = {**_chunk(cid, model, {}), "choices": [], "usage": _usage(words)}
    chunks.append(usage)
    if behaviour.wait_ms:
        await asyncio.sleep(behaviour.wait_ms / 1000)
    for i, chunk in enumerate(chunks):
        if _fault(behaviour, entry.chunks_sent) == "disconnect":
            if request.transport:
                request.transport.abort()
            entry.finished = True
            return response
        if _fault(behaviour, entry.chunks_sent) == "stall":
            await asyncio.Event().wait()  # until the client gives up and closes
        if _fault(behaviour, entry.chunks_sent) == "garbage":
            await response.write(b"data: this is not json {\n\n")
        await asyncio.sleep(behaviour.delay_ms / 1000)
        if chunk is None:
            word = str(time.time_ns()) if behaviour.stamp else words[i - 1]
            chunk = _chunk(cid, model, {"content": word if i == 1 else " " + word})
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        entry.chunks_sent += 1
    entry.finished = True
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _tool_call_chunks(cid: str, model: str, tools: list, words: list[str]) -> list[dict]:
    """A call of the first tool, its arguments streamed in pieces, as the real API does."""
    name = ((tools[0] or {}).get("function") or {}).get("name", "tool") if tools else "tool"
    arguments = orjson.dumps({"text": " ".join(words)}).decode()
    first = {
        "index": 0,
        "id": f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    out = [_chunk(cid, model, {"tool_calls": [first]})]
    for i in range(0, len(arguments), 8):
        piece = {"index": 0, "function": {"arguments": arguments[i : i + 8]}}
        out.append(_chunk(cid, model, {"tool_calls": [piece]}))
    out.append(_chunk(cid, model, {}, "tool_calls"))
    return out


def _fault(behaviour: Behaviour, sent: int) -> str | None:
    for name in ("disconnect", "stall", "garbage"):
        after = getattr(behaviour, f"{name}_after")
        if after is not None and sent == after:
            return name
    return None
