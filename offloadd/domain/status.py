"""The documents a client reads: the create answer and the status document (SPEC §1, §4)."""

from __future__ import annotations

import orjson

from offloadd.domain.messages import usage_tokens
from offloadd.storage.layout import Location, url_prefix
from offloadd.storage.store import (
    TERMINAL as TERMINAL,
)  # re-exported: kept with the files, for retention

KINDS = {1: "/v1/stream-chatgpt", 2: "/v1/async-chatgpt"}

CREATE_README = {
    1: "The `stream_events_url` endpoint below streams data sent by the ChatGPT API. "
    "Open it to receive incoming messages.",
    2: "The `status_url` endpoint below continuously updates with data sent by the ChatGPT API. "
    "Load it to check for new data.",
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


def endpoints(base_url: str, kind: int, loc: Location) -> dict:
    """The URLs of a conversation; the async kind has no stream URL, as in the original."""
    prefix = url_prefix(base_url, kind, loc)
    urls = {"status_url": f"{prefix}.json"}
    if kind == 1:
        urls["stream_events_url"] = f"{prefix}.txt"
    urls["stop_url"] = f"{prefix}/stop"
    return urls


def new_document(
    *,
    kind: int,
    endpoint: str | None = None,
    loc: Location,
    base_url: str,
    created_at: float,
    conversation_id: str,
    authorization: dict,
    options: dict,
    parameters: dict,
    from_status_url: str | None = None,
) -> dict:
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
            "endpoint": endpoint or KINDS[kind],
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


def create_answer(doc: dict, kind: int, authorization: dict) -> dict:
    """The create answer, key for key the original's."""
    return {
        "status": "success",
        "created_at": doc["created_at"],
        "conversation_id": doc["conversation_id"],
        "README": CREATE_README[kind],
        "authorization": authorization,
        "endpoints": {k: v for k, v in doc["endpoints"].items() if k != "from_status_url"},
    }


def public_view(doc: dict) -> dict:
    """The document as served: without offloadd's private bookkeeping."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def set_status(doc: dict, status: str) -> None:
    doc["status"] = status
    doc["README"] = STATUS_README[status]


# --- the transitions: every change to a document after it is made happens here ----------
#   waiting --first chunk--> streaming --end--> done | error | stopped


def processing(doc: dict, now: float) -> None:
    """The upstream call starts."""
    doc["request"]["processed_at"] = round(now, 3)


def answered(doc: dict, status_code: int, headers: dict) -> None:
    """The upstream accepted the call (its kept headers only)."""
    doc["response"].update(status_code=status_code, headers=headers)


def progressed(doc: dict, events: int) -> bool:
    """Another event was streamed; True when it was the first (waiting -> streaming)."""
    doc["events"] = events
    if doc["status"] != "waiting":
        return False
    set_status(doc, "streaming")
    return True


def with_body(doc: dict, body: dict | None) -> dict:
    """The answer so far (or final), as a `chat.completion`."""
    doc["response"]["body"] = body
    return doc


def finished(
    doc: dict, status: str, error: dict | None, body: dict | None, events: int, now: float
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


def tokens_used(doc: dict) -> tuple[int, bool]:
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


def webhook_outcome(doc: dict, outcome: dict) -> None:
    doc["webhook"] = outcome
