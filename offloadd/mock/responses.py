"""The mock upstream's Responses API: `POST /v1/responses`, streamed as OpenAI streams it
(typed events with sequence numbers, ending with `response.completed`) or not, with the
same fault switches as its Chat Completions (`mock?tokens=…&disconnect_after=…`)."""

from __future__ import annotations

import asyncio
import time
import uuid

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


def _words(body: dict, behaviour: Behaviour) -> list[str]:
    if behaviour.tokens is not None:
        return [f"t{i}" for i in range(behaviour.tokens)]
    value = body.get("input")
    if isinstance(value, list):
        users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"] or [{}]
        value = users[-1].get("content")
    if isinstance(value, list):
        value = " ".join(p.get("text", "") for p in value if isinstance(p, dict))
    return str(value or "").split() or ["…"]


def _response(rid: str, model: str, status: str, output: list, words: list[str]) -> dict:
    done = status == "completed"
    usage = {"input_tokens": 10, "output_tokens": len(words), "total_tokens": 10 + len(words)}
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": usage if done else None,
    }


def _message(mid: str, text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": content}


async def responses(request: web.Request) -> web.StreamResponse:
    admitted = await intake(request)
    if isinstance(admitted, web.Response):
        return admitted
    entry, behaviour = admitted
    model, body = entry.model, entry.body
    words = _words(body, behaviour)
    rid, mid = f"resp_mock{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex[:24]}"
    if not body.get("stream"):
        entry.finished = True
        message = _message(mid, " ".join(words), "completed")
        return web.json_response(_response(rid, model, "completed", [message], words), dumps=dumps)
    return await streamed(entry, _stream(request, entry, behaviour, words, rid, mid))


def _events(rid: str, mid: str, model: str, words: list[str]) -> list[dict | str]:
    """The events of one answer; a str stands for the text delta of that word."""
    text = " ".join(words)
    at = {"item_id": mid, "output_index": 0, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": []}
    return [
        {"type": "response.created", "response": _response(rid, model, "in_progress", [], words)},
        {
            "type": "response.in_progress",
            "response": _response(rid, model, "in_progress", [], words),
        },
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _message(mid, "", "in_progress") | {"content": []},
        },
        {"type": "response.content_part.added", **at, "part": empty},
        *[w if i == 0 else " " + w for i, w in enumerate(words)],
        {"type": "response.output_text.done", **at, "text": text},
        {"type": "response.content_part.done", **at, "part": {**empty, "text": text}},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": _message(mid, text, "completed"),
        },
        {
            "type": "response.completed",
            "response": _response(
                rid, model, "completed", [_message(mid, text, "completed")], words
            ),
        },
    ]


async def _stream(
    request: web.Request, entry: Seen, behaviour: Behaviour, words: list[str], rid: str, mid: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "x-request-id": f"req_{uuid.uuid4().hex}"}
    )
    await response.prepare(request)
    if behaviour.wait_ms:
        await asyncio.sleep(behaviour.wait_ms / 1000)
    for seq, event in enumerate(_events(rid, mid, entry.model, words)):
        garbage = b"event: response.output_text.delta\ndata: not json {\n\n"
        if not await next_chunk(request, response, entry, behaviour, garbage):
            return response
        if isinstance(event, str):
            delta = str(time.time_ns()) if behaviour.stamp else event
            event = {
                "type": "response.output_text.delta",
                "item_id": mid,
                "output_index": 0,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
            }
        event = {**event, "sequence_number": seq}
        await send_named(response, entry, event)
    return await ended(response, entry)
