"""A stand-in for OpenAI's Chat Completions and Responses APIs (SPEC §8) and Anthropic's
Messages API, for tests, benchmarks and a first try: here Chat Completions; the Responses
API is in `responses.py`, the Messages API (and its switches) in `messages.py`, what they
share in `common.py`, the app in `app.py`.

It is an external server as far as offloadd is concerned: it imports nothing of
offloadd's server modules, and offloadd reaches it over HTTP like any upstream.
The model name steers it: `mock?tokens=500&delay_ms=20&stall_after=7`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from aiohttp import web

from offloadd.mock.common import Behaviour, Seen, dumps, intake, next_chunk, streamed


async def completions(request: web.Request) -> web.StreamResponse:
    admitted = await intake(request)
    if isinstance(admitted, web.Response):
        return admitted
    entry, behaviour = admitted
    model, body = entry.model, entry.body
    words = _tokens(body, behaviour)
    if not body.get("stream"):
        entry.finished = True
        return web.json_response(_completion(model, words), dumps=dumps)
    return await streamed(entry, _stream(request, entry, behaviour, words))


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
        if not await next_chunk(request, response, entry, behaviour, b"data: not json {\n\n"):
            return response
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
