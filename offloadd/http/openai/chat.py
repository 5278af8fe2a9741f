"""OpenAI's own Chat Completions endpoint, so the official SDKs work with a `base_url`
change: `POST /v1/chat/completions`, streaming or not.

Every call is an ordinary offloaded request (its files, status, stream and stop URLs,
quotas, webhooks); its URLs come back in `X-Offloadd-*` headers. The SDK's stream is the
request's own transcript, followed from its first byte, so a caller that disconnects
leaves the model call running, to be followed or resumed from `X-Offloadd-Stream-Url` —
unless it sent `X-Offloadd-Stop-On-Disconnect: true`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from offloadd.domain.dialects import CHAT, Dialect
from offloadd.domain.validate import ChatRequest, parse_body
from offloadd.errors import ApiError
from offloadd.http.appkeys import CONFIG, CREATOR, HUB, RUNNER, STORE
from offloadd.http.middleware import cors_headers
from offloadd.http.native import public_base, read_create, upstream_key
from offloadd.requests.create import Created, NewRequest
from offloadd.requests.readers import respond
from offloadd.storage.layout import Location, parse_url
from offloadd.storage.transcript import STOPPED_MESSAGE

STOP_ON_DISCONNECT = "X-Offloadd-Stop-On-Disconnect"
URL_HEADERS = {
    "status_url": "X-Offloadd-Status-Url",
    "stream_events_url": "X-Offloadd-Stream-Url",
    "stop_url": "X-Offloadd-Stop-Url",
}


class UpstreamFailed(ApiError):
    """The offloaded call ended in error: answered as OpenAI answers its own errors."""

    status = 502
    code = "upstream_error"


async def create_for_sdk(
    request: web.Request, caller: str | None, body: bytes, chat: ChatRequest, dialect: Dialect
) -> tuple[Created, Location]:
    """The offloaded request behind an OpenAI SDK call, and where it lives."""
    created = await request.app[CREATOR].create(
        NewRequest(
            kind=1,
            endpoint=request.path,
            dialect=dialect,
            body=body,
            chat=chat,
            upstream_key=upstream_key(request, bearer_too=True),
            organization=request.headers.get("OpenAI-Organization")
            or request.headers.get("X-OpenAI-Organization"),
            base_url=public_base(request),
            caller=caller,
            created_at=time.time(),
            idempotency_key=request.headers.get("Idempotency-Key"),
        )
    )
    found = parse_url(created.answer["endpoints"]["status_url"])
    assert found is not None  # we made this URL
    return created, found[1]


def stops_on_disconnect(request: web.Request) -> bool:
    return request.headers.get(STOP_ON_DISCONNECT, "").lower() in ("1", "true", "yes")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    caller, body = await read_create(request)
    chat = parse_body(body, request.app[CONFIG])
    created, loc = await create_for_sdk(request, caller, body, chat, CHAT)
    headers = url_headers(created)
    if chat.stream:
        return await follow(request, loc, headers, stops_on_disconnect(request))
    return await completion(request, loc, headers)


def url_headers(created: Created) -> dict:
    answer = created.answer
    headers = {URL_HEADERS[k]: v for k, v in answer["endpoints"].items() if k in URL_HEADERS}
    if token := answer["authorization"].get("bearer_token"):
        headers["X-Offloadd-Bearer-Token"] = token
    headers["X-Offloadd-Conversation-Id"] = answer["conversation_id"]
    return {**headers, **(created.headers or {})}


async def follow(
    request: web.Request, loc: Location, headers: dict, stop_on_disconnect: bool
) -> web.StreamResponse:
    """The request's transcript from its start: exactly the stream the SDK expects."""
    path, runner = request.app[STORE].txt_path(loc), request.app[RUNNER]
    try:
        response = await respond(
            request,
            request.app[HUB],
            path,
            None,
            {
                **cors_headers(request),
                **headers,
            },
        )
    finally:  # the reader left before the end (or was cancelled as it left)
        if stop_on_disconnect and runner.is_running(loc):
            runner.cancel(loc.uuid)
    return response


async def completion(
    request: web.Request,
    loc: Location,
    headers: dict,
    render: Callable[[dict], dict] = lambda doc: doc["response"]["body"],
) -> web.Response:
    """`stream: false`: the answer once the request is done (`render` makes it of the
    document: a `chat.completion`, or a Responses API object); failures as OpenAI's."""
    doc = await request.app[RUNNER].until_done(loc)
    assert doc is not None
    if doc["status"] == "done":
        return web.json_response(render(doc), headers=headers)
    raise failure(doc, headers)


def failure(doc: dict, headers: dict) -> ApiError:
    """A request that ended in error or was stopped, as the SDK's exception."""
    error = doc.get("error") or {"code": "stopped", "message": STOPPED_MESSAGE}
    failed = UpstreamFailed(error["message"], code=error["code"])
    status = error.get("upstream_status")
    if error["code"] == "stopped" or doc["status"] == "stopped":
        failed.status = 409
    elif isinstance(status, int) and 400 <= status < 600:
        failed.status = status
    failed.headers = headers
    return failed
