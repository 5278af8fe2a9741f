"""The mock upstream as an aiohttp app: OpenAI's two APIs and Anthropic's Messages API,
the model list, and `/_mock/requests` (what it received, for tests and benchmarks to
inspect)."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict

from aiohttp import web

from offloadd.mock.chat import completions
from offloadd.mock.common import SEEN, SEEN_KEPT, dumps
from offloadd.mock.messages import messages
from offloadd.mock.responses import responses

MODELS = ("mock", "gpt-3.5-turbo", "gpt-4o-mini")


def make_mock_app() -> web.Application:
    """The mock as an aiohttp app; run it with `handler_cancellation=True` so a closed
    client connection is seen at once, not at the next write."""
    app = web.Application()
    app[SEEN] = deque(maxlen=SEEN_KEPT)  # a mock left running for days keeps the newest
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)  # Anthropic's: its base URL has no /v1
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/_mock/requests", _requests)
    app.router.add_delete("/_mock/requests", _clear)
    return app


async def _models(request: web.Request) -> web.Response:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "offloadd"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})


async def _requests(request: web.Request) -> web.Response:
    seen = request.app[SEEN]
    return web.json_response({"requests": [asdict(s) for s in seen]}, dumps=dumps)


async def _clear(request: web.Request) -> web.Response:
    request.app[SEEN].clear()
    return web.json_response({"requests": []})
