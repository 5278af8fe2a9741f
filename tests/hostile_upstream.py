"""A hostile fake upstream: it answers a Chat Completions, Responses or (Anthropic's)
Messages call with whatever the test scripted, byte for byte. Not our mock (which agrees
with us): this one lies. The caller's key is its Bearer, or Anthropic's `x-api-key`.

The script travels in the request's own `model` field, `hostile:<base64url JSON>`, so
any number of requests with different scripts run at once and nothing is shared:

    {"status": 200, "headers": {"x-request-id": "..."},
     "lines": ["data: {...}", "data: [DONE]"],    # each sent as `line\\n\\n`
     "raw": "<base64 bytes>",                     # or exactly these bytes
     "echo_key": true,                            # put the caller's key in chunk and header
     "then": "close" | "hang"}                    # after the script (default: end)
"""

from __future__ import annotations

import asyncio
import base64

import orjson
from aiohttp import web


def model(script: dict) -> str:
    return "hostile:" + base64.urlsafe_b64encode(orjson.dumps(script)).decode()


def chunk(content: object = "x", index: object = 0, **extra: object) -> str:
    body = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": None}],
        **extra,
    }
    return "data: " + orjson.dumps(body).decode()


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    script = orjson.loads(base64.urlsafe_b64decode(body["model"].split(":", 1)[1]))
    key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix(
        "Bearer "
    )
    headers = dict(script.get("headers") or {})
    if script.get("echo_key"):
        headers["x-request-id"] = f"req-{key}"
    response = web.StreamResponse(status=script.get("status", 200), headers=headers)
    response.content_type = "text/event-stream"
    await response.prepare(request)
    lines = [line.replace("$KEY", key) for line in script.get("lines") or ()]
    for line in lines:
        await response.write(line.encode() + b"\n\n")
    if script.get("raw"):
        await response.write(base64.b64decode(script["raw"]))
    if script.get("then") == "hang":
        await asyncio.sleep(3600)
    if script.get("then") == "close":
        assert request.transport is not None
        request.transport.close()
    return response


def event(kind: str, **fields: object) -> str:
    """A Responses API event line (`data:` only; offloadd names it from its `type`)."""
    return "data: " + orjson.dumps({"type": kind, **fields}).decode()


def named(kind: str, **fields: object) -> str:
    """An event of Anthropic's Messages API, named as it names them."""
    return f"event: {kind}\ndata: " + orjson.dumps({"type": kind, **fields}).decode()


def make_hostile_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_post("/v1/responses", _completions)  # the script decides what it says
    app.router.add_post("/v1/messages", _completions)  # Anthropic's (its base has no /v1)
    return app
