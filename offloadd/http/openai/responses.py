"""OpenAI's Responses API over offloaded requests, for any upstream that speaks it:
`POST /v1/responses` (streamed, not, or `background: true`), `GET /v1/responses/{id}`
(the object so far, or `?stream=true&starting_after=N` to resume its events), and
`POST /v1/responses/{id}/cancel`. Unlike OpenAI's hosted background mode, a stream can
be resumed, and a response read, until retention removes it."""

from __future__ import annotations

from aiohttp import web

from offloadd.domain.access import any_allows
from offloadd.domain.dialects import RESPONSES, RESPONSES_ENDPOINT
from offloadd.domain.responses import location_of, parse_responses_body, response_id, served
from offloadd.domain.status import StatusDocument
from offloadd.errors import BadRequest, NotFound
from offloadd.http.appkeys import CONFIG, HUB, RUNNER, STORE
from offloadd.http.common import (
    completion,
    create_for_sdk,
    follow,
    read_create,
    stops_on_disconnect,
    tokens,
    url_headers,
)
from offloadd.http.events import respond
from offloadd.http.middleware import cors_headers
from offloadd.storage.layout import Location


async def create_response(request: web.Request) -> web.StreamResponse:
    caller, body = await read_create(request)
    chat = parse_responses_body(body, request.app[CONFIG])
    created, loc = await create_for_sdk(request, caller, body, chat, RESPONSES)
    rid = response_id(loc)
    headers = {**url_headers(created), "X-Offloadd-Response-Id": rid}
    if chat.stream:
        return await follow(request, loc, headers, stops_on_disconnect(request))
    if chat.background:
        doc = await request.app[RUNNER].document(loc)
        assert doc is not None
        return web.json_response(served(doc, rid), headers=headers)
    return await completion(request, loc, headers, lambda doc: served(doc, rid))


async def _response(request: web.Request) -> tuple[str, Location, StatusDocument]:
    """The response an id names: public, or private and opened by a token the caller sent
    (`Authorization: Bearer`, or `?token=`); 404 otherwise, revealing nothing."""
    rid = request.match_info["id"]
    for scope in ("pub", "priv"):
        loc = location_of(rid, scope)
        doc = await request.app[RUNNER].document(loc) if loc else None
        if loc is None or doc is None or doc["request"]["endpoint"] != RESPONSES_ENDPOINT:
            continue
        if any_allows(doc, tokens(request, query_too=True)):
            return rid, loc, doc
    raise NotFound(f"no response with id {rid!r}", code="response_not_found")


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    rid, loc, doc = await _response(request)
    if request.query.get("stream") not in ("true", "1"):
        return web.json_response(served(request.app[RUNNER].with_answer(loc, doc), rid))
    del doc  # a reader of the stream must not keep the document alive while it reads
    after = request.query.get("starting_after")
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise BadRequest("`starting_after` must be a sequence number", code="invalid_parameter")
    # events are recorded with ids 1, 2, …: sequence number N is id N + 1
    last_id = int(after) + 1 if after is not None else None
    path = request.app[STORE].txt_path(loc)
    return await respond(request, request.app[HUB], path, last_id, cors_headers(request))


async def cancel_response(request: web.Request) -> web.Response:
    """Cancel (closing the upstream connection); a finished response is answered as it is."""
    rid, loc, _ = await _response(request)
    doc = await request.app[RUNNER].stop(loc)
    if doc is None:
        raise NotFound(f"no response with id {rid!r}", code="response_not_found")
    return web.json_response(served(doc, rid))
