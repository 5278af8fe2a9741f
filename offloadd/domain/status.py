"""The documents a client reads: the create answer and the status document (SPEC §1, §4)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast

import orjson

from offloadd.domain.messages import usage_tokens
from offloadd.storage.layout import Kind, Location, url_prefix
from offloadd.storage.store import (
    TERMINAL as TERMINAL,
)  # re-exported: kept with the files, for retention
from offloadd.storage.store import Store

ENDPOINTS = {Kind.STREAM: "/v1/stream-chatgpt", Kind.ASYNC: "/v1/async-chatgpt"}


class RequestTimes(TypedDict):
    """`request`: which endpoint made it, and when it was asked, started and finished."""

    endpoint: str
    request_at: float
    processed_at: float | None
    finished_at: float | None
    request_time: float | None
    total_time: float | None


class UpstreamAnswer(TypedDict):
    """`response`: the upstream's status and kept headers, and the answer so far."""

    status_code: int | None
    headers: dict[str, Any]
    body: dict[str, Any] | None


class StatusDocument(TypedDict):
    """The status document (`<uuid>.json`): what `new_document` makes, the transitions
    below change, and readers serve (`public_view`). Read back from disk it is a plain
    dict of this shape; the optional keys appear with a webhook, the Responses API or
    private access (`_offloadd`, never served)."""

    status: str  # waiting | streaming | done | error | stopped
    created_at: int
    conversation_id: str
    README: str
    authorization: dict[str, Any]
    endpoints: dict[str, str]
    request: RequestTimes
    options: dict[str, Any]
    parameters: dict[str, Any]
    response: UpstreamAnswer
    error: dict[str, Any] | None
    events: int
    webhook: NotRequired[dict[str, Any]]
    background: NotRequired[bool]
    previous_response_id: NotRequired[str | None]
    _offloadd: NotRequired[dict[str, Any]]


CREATE_README = {
    Kind.STREAM: "The `stream_events_url` endpoint below streams data sent by the ChatGPT API. "
    "Open it to receive incoming messages.",
    Kind.ASYNC: "The `status_url` endpoint below continuously updates with data sent by the "
    "ChatGPT API. Load it to check for new data.",
}

STATUS_README = {
    "waiting": "The request has been sent to the ChatGPT API and is waiting for its first "
    "response. Load this URL again to check for new data.",
    "streaming": "The ChatGPT API is sending its response: "
    "`response.body.choices[0].message.content` holds the text received so far. "
    "Load this URL again to check for new data.",
    "done": "The ChatGPT API response is complete and available in `response.body`.",
    "error": "The request ended with an error, described in `error`; "
    "`response.body` holds whatever was received before it.",
    "stopped": "The request was stopped before the ChatGPT API completed it; "
    "`response.body` holds the text generated until then.",
}


def endpoints(base_url: str, kind: Kind, loc: Location) -> dict:
    """The URLs of a conversation; the async kind has no stream URL, as in the original."""
    prefix = url_prefix(base_url, kind, loc)
    urls = {"status_url": f"{prefix}.json"}
    if kind is Kind.STREAM:
        urls["stream_events_url"] = f"{prefix}.txt"
    urls["stop_url"] = f"{prefix}/stop"
    return urls


def new_document(
    *,
    kind: Kind,
    endpoint: str | None = None,
    loc: Location,
    base_url: str,
    created_at: float,
    conversation_id: str,
    authorization: dict,
    options: dict,
    parameters: dict,
    from_status_url: str | None = None,
) -> StatusDocument:
    """The status document as first written: `waiting`, nothing received yet."""
    urls = endpoints(base_url, kind, loc)
    if from_status_url:
        urls["from_status_url"] = from_status_url
    return {
        "status": "waiting",
        "created_at": int(created_at),
        "conversation_id": conversation_id,
        "README": STATUS_README["waiting"],
        "authorization": authorization,
        "endpoints": urls,
        "request": {
            "endpoint": endpoint or ENDPOINTS[kind],
            "request_at": round(created_at, 3),
            "processed_at": None,
            "finished_at": None,
            "request_time": None,
            "total_time": None,
        },
        "options": options,
        "parameters": parameters,
        "response": {"status_code": None, "headers": {}, "body": None},
        "error": None,
        "events": 0,
    }


def stored(store: Store, loc: Location) -> StatusDocument | None:
    """A document read back from its file: plain JSON, of the shape this module wrote."""
    return cast("StatusDocument | None", store.read_status(loc))


def create_answer(doc: StatusDocument, kind: Kind, authorization: dict) -> dict:
    """The create answer, key for key the original's."""
    return {
        "status": "success",
        "created_at": doc["created_at"],
        "conversation_id": doc["conversation_id"],
        "README": CREATE_README[kind],
        "authorization": authorization,
        "endpoints": {k: v for k, v in doc["endpoints"].items() if k != "from_status_url"},
    }


def public_view(doc: StatusDocument) -> dict[str, Any]:
    """The document as served: without offloadd's private bookkeeping."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def set_status(doc: StatusDocument, status: str) -> None:
    doc["status"] = status
    doc["README"] = STATUS_README[status]


# --- the transitions: every change to a document after it is made happens here ----------
#   waiting --first chunk--> streaming --end--> done | error | stopped


def processing(doc: StatusDocument, now: float) -> None:
    """The upstream call starts."""
    doc["request"]["processed_at"] = round(now, 3)


def answered(doc: StatusDocument, status_code: int, headers: dict) -> None:
    """The upstream accepted the call (its kept headers only)."""
    doc["response"]["status_code"], doc["response"]["headers"] = status_code, headers


def progressed(doc: StatusDocument, events: int) -> bool:
    """Another event was streamed; True when it was the first (waiting -> streaming)."""
    doc["events"] = events
    if doc["status"] != "waiting":
        return False
    set_status(doc, "streaming")
    return True


def with_body(doc: StatusDocument, body: dict | None) -> StatusDocument:
    """The answer so far (or final), as a `chat.completion`."""
    doc["response"]["body"] = body
    return doc


def concluded(
    doc: StatusDocument, status: str, error: dict | None, body: dict | None, events: int, now: float
) -> None:
    """The one terminal transition: done, error or stopped, with its timings."""
    set_status(doc, status)
    doc["error"] = error
    with_body(doc, body)
    request = doc["request"]
    request["finished_at"] = round(now, 3)
    request["request_time"] = round(now - (request["processed_at"] or now), 3)
    request["total_time"] = round(now - request["request_at"], 3)
    doc["events"] = events


def tokens_used(doc: StatusDocument) -> tuple[int, bool]:
    """Tokens a finished request used, for token budgets: the upstream's own count
    (prompt + completion), or — stopped or failed before usage arrived — an estimate
    of about four characters a token over the prompt and the answer (True: estimated)."""
    body = (doc.get("response") or {}).get("body") or {}
    usage = body.get("usage") if isinstance(body, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total, False  # a negative count would lift the key's budget: not trusted
    if isinstance(usage, dict) and (counted := usage_tokens(usage)) is not None:
        return counted  # Anthropic's: input from `message_start`, output from the end
    params = doc.get("parameters") or {}
    prompt = orjson.dumps(params.get("messages") or params.get("input") or "")
    said = (body.get("choices") or body.get("output") or body.get("content")) if body else None
    answer = orjson.dumps(said or "") if body else b""
    return -(-(len(prompt) + len(answer)) // 4), True


def webhook_outcome(doc: StatusDocument, outcome: dict) -> None:
    doc["webhook"] = outcome
