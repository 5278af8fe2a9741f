"""OpenAI's own Chat Completions endpoint, so the official SDKs work with a `base_url`
change: `POST /v1/chat/completions`, streaming or not.

Every call is an ordinary offloaded request (its files, status, stream and stop URLs,
quotas, webhooks); its URLs come back in `X-Offloadd-*` headers. The SDK's stream is the
request's own transcript, followed from its first byte, so a caller that disconnects
leaves the model call running, to be followed or resumed from `X-Offloadd-Stream-Url` —
unless it sent `X-Offloadd-Stop-On-Disconnect: true`.
"""

from __future__ import annotations

from aiohttp import web

from offloadd.domain.dialects import CHAT
from offloadd.domain.validate import parse_body
from offloadd.http.appkeys import CONFIG
from offloadd.http.common import answer, create_for_sdk, read_create, url_headers


async def chat_completions(request: web.Request) -> web.StreamResponse:
    caller, body = await read_create(request)
    chat = parse_body(body, request.app[CONFIG])
    created, loc = await create_for_sdk(request, caller, body, chat, CHAT)
    headers = url_headers(created)
    return await answer(request, loc, headers, chat.stream)
