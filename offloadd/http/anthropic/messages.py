"""Anthropic's Messages API, so its official SDKs work with a `base_url` change (no `/v1`):
`POST /v1/messages`, streamed or not.

Every call is an ordinary offloaded request (its files, status, stream and stop URLs,
quotas, budgets, webhooks, idempotency); its URLs come back in `X-Offloadd-*` headers. The
SDK's stream is the request's own transcript, Anthropic's named events as the upstream
sent them, followed from its first byte; a disconnect leaves the call running unless the
caller sent `X-Offloadd-Stop-On-Disconnect: true`. Every answer of a created request says
`x-should-retry: false`: an SDK retry would start a second request.
"""

from __future__ import annotations

from aiohttp import web

from offloadd.domain.dialects import MESSAGES
from offloadd.domain.messages import parse_messages_body
from offloadd.http.appkeys import CONFIG
from offloadd.http.common import (
    answer,
    anthropic_headers,
    anthropic_key,
    create_for_sdk,
    read_create,
    url_headers,
)


async def create_message(request: web.Request) -> web.StreamResponse:
    caller, body = await read_create(request)
    message = parse_messages_body(body, request.app[CONFIG])
    key, sent = anthropic_key(request), anthropic_headers(request)
    created, loc = await create_for_sdk(request, caller, body, message, MESSAGES, key, sent)
    headers = {**url_headers(created), "x-should-retry": "false"}
    return await answer(request, loc, headers, message.stream)
