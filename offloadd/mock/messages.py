"""The mock upstream's Anthropic Messages API: `POST /v1/messages` (under the base URL with
no `/v1`, as Anthropic's), streamed as Anthropic streams it — named events
`message_start`, `content_block_start`, `ping`, `content_block_delta`…,
`content_block_stop`, `message_delta`, `message_stop` — or not.

As Anthropic's API it wants a key (`x-api-key`, or a Bearer) and an `anthropic-version`
(400 without one), and under `anthropic-version: 2026-10-21` it refuses `temperature`,
`top_p` and `top_k` (400). A request with `tools` is answered with a call of the first
tool, its input streamed as `input_json_delta`s split mid-string; one with `thinking`
first thinks (`thinking_delta`, `signature_delta`).

The switches of the model name are those of the other APIs (`mock?tokens=…&delay_ms=…`):
`status=N` refuses with Anthropic's error for N (400 `invalid_request_error`, 401, 403,
404, 413, 429 with `retry-after`, 500 `api_error`, 529 `overloaded_error`…),
`disconnect_after=N` cuts the connection after N events, `stall_after=N` stops sending,
`garbage_after=N` sends a record that is not JSON; and `error_after=N` sends
`event: error` `overloaded_error` after N events, as Anthropic does mid-stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from aiohttp import web

from offloadd.mock.common import (
    Behaviour,
    Seen,
    dumps,
    ended,
    intake,
    next_chunk,
    send_named,
    streamed,
)

ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "model: not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
NEW_VERSION = "2026-10-21"
SAMPLING = ("temperature", "top_p", "top_k")


def refuse(status: int, message: str = "", retry_after: int = 1, key: str = "") -> web.Response:
    """An error as Anthropic's API answers it."""
    kind, default = ERRORS.get(status, ("api_error", f"HTTP {status}."))
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": f"req_mock{uuid.uuid4().hex[:16]}",
    }
    headers = {"retry-after": str(retry_after)} if status == 429 else {}
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def _key(request: web.Request) -> str:
    return request.headers.get("x-api-key") or request.headers.get(
        "Authorization", ""
    ).removeprefix("Bearer ")


async def messages(request: web.Request) -> web.StreamResponse:
    admitted = await intake(request, refuse, _key)
    if isinstance(admitted, web.Response):
        return admitted
    entry, behaviour = admitted
    sent = request.headers
    entry.headers = {k.lower(): v for k, v in sent.items() if k.lower().startswith("anthropic-")}
    entry.headers["key_in"] = "x-api-key" if "x-api-key" in sent else "authorization"
    version = request.headers.get("anthropic-version")
    if not version:
        return refuse(400, "anthropic-version: header is required")
    if version == NEW_VERSION and (extra := [k for k in SAMPLING if k in entry.body]):
        return refuse(400, f"{extra[0]}: Extra inputs are not permitted")
    events = _events(entry, behaviour)
    if not entry.body.get("stream"):
        entry.finished = True
        return web.json_response(_assembled(events), dumps=dumps)
    return await streamed(entry, _stream(request, entry, behaviour, events))


def _words(body: dict, behaviour: Behaviour) -> list[str]:
    if behaviour.tokens is not None:
        return [f"t{i}" for i in range(behaviour.tokens)]
    turns = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in turns if m.get("role") == "user"] or turns or [{}]
    content = users[-1].get("content")
    if isinstance(content, list):
        content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return str(content or "").split() or ["…"]


def _events(entry: Seen, behaviour: Behaviour) -> list[dict | str]:
    """The events of one answer; a str stands for the text delta of that word (made when
    sent, so `stamp` is the send time)."""
    body, words = entry.body, _words(entry.body, behaviour)
    message: dict = {
        "id": f"msg_mock{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": entry.model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    out: list[dict | str] = [{"type": "message_start", "message": message}]
    index = 0
    if isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled":
        out += _block(
            index,
            {"type": "thinking", "thinking": "", "signature": ""},
            [
                {"type": "thinking_delta", "thinking": "Let me think."},
                {"type": "signature_delta", "signature": "mock-signature"},
            ],
        )
        index += 1
    start = {"type": "content_block_start", "index": index}
    out += [{**start, "content_block": {"type": "text", "text": ""}}, {"type": "ping"}]
    out += [w if i == 0 else " " + w for i, w in enumerate(words)]
    out.append({"type": "content_block_stop", "index": index})
    stop_reason = "end_turn"
    if isinstance(tools := body.get("tools"), list) and tools and isinstance(tools[0], dict):
        arguments = orjson.dumps({"text": " ".join(words)}).decode()
        call = {"type": "tool_use", "id": f"toolu_mock{uuid.uuid4().hex[:12]}", "input": {}}
        call["name"] = str(tools[0].get("name") or "tool")
        pieces = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *pieces]]
        out += _block(index + 1, call, deltas)
        stop_reason = "tool_use"
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    out.append({"type": "message_delta", "delta": delta, "usage": {"output_tokens": len(words)}})
    out.append({"type": "message_stop"})
    return out


def _block(index: int, block: dict, deltas: list[dict]) -> list[dict | str]:
    at = {"index": index}
    return [
        {"type": "content_block_start", **at, "content_block": block},
        *[{"type": "content_block_delta", **at, "delta": d} for d in deltas],
        {"type": "content_block_stop", **at},
    ]


def _text_delta(index: int, text: str) -> dict:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def _assembled(events: list[dict | str]) -> dict:
    """The `message` a non-streamed call answers: the events added up."""
    message: dict = {}
    blocks: list[dict] = []
    for event in events:
        if isinstance(event, str):
            blocks[-1]["text"] += event
        elif event["type"] == "message_start":
            message = dict(event["message"])
        elif event["type"] == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            delta = event["delta"]
            for key in ("text", "thinking", "signature", "partial_json"):
                if key in delta:
                    blocks[-1][key] = blocks[-1].get(key, "") + delta[key]
        elif event["type"] == "message_delta":
            message.update(event["delta"])
            message["usage"] = {**message["usage"], **event["usage"]}
    for block in blocks:
        if "partial_json" in block:
            block["input"] = orjson.loads(block.pop("partial_json"))
    return {**message, "content": blocks}


async def _stream(
    request: web.Request, entry: Seen, behaviour: Behaviour, events: list[dict | str]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "request-id": f"req_mock{uuid.uuid4().hex[:16]}",
            "anthropic-ratelimit-requests-limit": "4000",
        }
    )
    await response.prepare(request)
    if behaviour.wait_ms:
        await asyncio.sleep(behaviour.wait_ms / 1000)
    text_index = next(
        e["index"]
        for e in events
        if isinstance(e, dict) and e.get("content_block", {}).get("type") == "text"
    )
    for event in events:
        garbage = b"event: content_block_delta\ndata: not json {\n\n"
        if not await next_chunk(request, response, entry, behaviour, garbage):
            return response
        if behaviour.error_after is not None and entry.chunks_sent == behaviour.error_after:
            error = {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            }
            await response.write(b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
            entry.finished = True
            await response.write_eof()
            return response
        if isinstance(event, str):
            event = _text_delta(text_index, str(time.time_ns()) if behaviour.stamp else event)
        await send_named(response, entry, event)
    return await ended(response, entry)
