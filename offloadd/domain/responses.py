"""The Responses API's domain: response ids ⇄ where the request lives, the body of a create,
the response object assembled from typed events, and how it is served.

A response id is the request's own location: `resp_<YYYYMMDDHHMMSS><uuid hex>`, so any
daemon on the directory finds it without an index. As with public conversations, the
id is the capability (122 random bits).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from offloadd.config import Config
from offloadd.domain.status import StatusDocument
from offloadd.domain.validate import OWN_FIELDS, ChatRequest, json_object, model_of, options_of
from offloadd.errors import BadRequest
from offloadd.storage.layout import Location

RESPONSE_ID = re.compile(r"resp_(\d{14})([0-9a-f]{32})")
NOT_SENT = ("background", "previous_response_id")  # offloadd does these itself


def response_id(loc: Location) -> str:
    return "resp_" + loc.stamp.replace("/", "") + loc.uuid.replace("-", "")


def with_response_id(raw: bytes, event: dict, rid: str) -> tuple[bytes, dict]:
    """The event with offloadd's id in its `response` object (`response.created` and the
    other lifecycle events carry the upstream's): a client that reads the id from the
    stream must be able to retrieve, cancel and continue by it. Other events are as sent."""
    response = event.get("response")
    if not isinstance(response, dict) or response.get("id") == rid:
        return raw, event
    event = {**event, "response": {**response, "id": rid}}
    return orjson.dumps(event), event


def location_of(rid: str, scope: str = "pub") -> Location | None:
    """Where the response lives, in `scope` (a private response's id is the same shape:
    the caller's token, not the id, decides whether it is found)."""
    m = RESPONSE_ID.fullmatch(rid)
    if not m:
        return None
    s, u = m[1], m[2]
    stamp = "/".join((s[:4], s[4:6], s[6:8], s[8:10], s[10:12], s[12:14]))
    return Location.parse(scope, stamp, f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}")


def parse_responses_body(raw: bytes, config: Config) -> ChatRequest:
    """A Responses API create body; `input` is required, the rest passes through."""
    body = json_object(raw)
    value = body.get("input")
    if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
        raise BadRequest("`input` must be a non-empty string or list", code="invalid_input")
    for flag in ("stream", "background"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise BadRequest(f"`{flag}` must be true or false", code="invalid_parameter")
    if body.get("from_status_url") is not None:
        raise BadRequest(
            "`from_status_url` continues chat requests; a response continues with "
            "`previous_response_id`",
            code="invalid_parameter",
        )
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise BadRequest("`previous_response_id` must be a string", code="invalid_parameter")
    params = {k: v for k, v in body.items() if k not in OWN_FIELDS and k not in NOT_SENT}
    model_of(params, config)
    asked_stream = params.get("stream") is True
    params["stream"] = True
    return ChatRequest(
        options_of(body, config),
        params,
        usage_added=False,
        stream=asked_stream,
        background=body.get("background") is True,
        previous_response_id=previous,
    )


def input_items(value: Any) -> list:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value or [])


def continued_input(earlier: StatusDocument, new_input: Any) -> list:
    """`previous_response_id`, for any upstream: the earlier input, its output, then the new."""
    before = input_items((earlier.get("parameters") or {}).get("input"))
    output = ((earlier.get("response") or {}).get("body") or {}).get("output") or []
    return before + [item for item in output if isinstance(item, dict)] + input_items(new_input)


class ResponseAssembly:
    """The response object from its events: the latest full `response` an event carried,
    with the output items and text streamed since."""

    def __init__(self) -> None:
        self.response: dict | None = None
        self.items: dict[int, dict] = {}
        self.text: dict[tuple[int, int], str] = {}
        self.final = False

    def empty(self) -> bool:
        return self.response is None and not self.items

    def add(self, event: dict) -> None:
        kind = event.get("type")
        if isinstance(event.get("response"), dict):
            self.response = event["response"]
            self.final = kind in ("response.completed", "response.failed", "response.incomplete")
        index = event.get("output_index")
        if not isinstance(index, int) or isinstance(index, bool):
            return
        if kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(event.get("item"), dict):
                self.items[index] = event["item"]
        elif kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            part = event.get("content_index")
            part = part if isinstance(part, int) and not isinstance(part, bool) else 0
            self.text[index, part] = self.text.get((index, part), "") + event["delta"]

    def body(self) -> dict:
        body = dict(self.response or {"object": "response", "status": "in_progress"})
        if not self.final or not body.get("output"):
            body["output"] = [self._item(i) for i in sorted(self.items)]
        return body

    def _item(self, index: int) -> dict:
        """The item with its streamed text put into its parts; a part index the item cannot
        hold (negative, or past its end) gets one part appended, never padding."""
        item = dict(self.items[index])
        parts = [(c, t) for (i, c), t in sorted(self.text.items()) if i == index]
        if parts and item.get("type") == "message":
            content = (
                [p for p in item.get("content") or [] if isinstance(p, dict)]
                if isinstance(item.get("content"), list)
                else []
            )
            for c, text in parts:
                if 0 <= c < len(content):
                    if not content[c].get("text"):
                        content[c] = {**content[c], "text": text}
                elif c >= 0:
                    content.append({"type": "output_text", "text": text, "annotations": []})
            item["content"] = content
        return item


STATUS = {"waiting": "queued", "streaming": "in_progress", "stopped": "cancelled"}


def served(doc: StatusDocument, rid: str) -> dict:
    """The response object as the Responses API answers it, for any state of the request."""
    params = doc.get("parameters") or {}
    body = dict((doc.get("response") or {}).get("body") or {})
    body.update(id=rid, object="response", background=bool(doc.get("background")))
    body.setdefault("created_at", doc.get("created_at"))
    body.setdefault("model", params.get("model"))
    body.setdefault("output", [])
    for key in ("instructions", "tools", "tool_choice", "metadata", "temperature", "top_p"):
        body.setdefault(key, params.get(key))
    body.setdefault("parallel_tool_calls", True)
    body.setdefault("usage", None)
    status = doc["status"]
    error = doc.get("error")
    if status == "error":
        body["status"] = "failed"
        if error:
            body["error"] = {"code": error["code"], "message": error["message"]}
    elif status == "done":
        body["status"] = body.get("status") if body.get("status") != "in_progress" else "completed"
    else:
        body["status"] = STATUS[status]
    body.setdefault("error", None)
    body.setdefault("incomplete_details", None)
    if previous := doc.get("previous_response_id"):
        body["previous_response_id"] = previous
    return body
